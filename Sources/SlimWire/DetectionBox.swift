import SlimCore

/// The one conversion between the wire's 3-D detection record and the BEV box the detector,
/// late fusion and AP work with.
extension Detection {
    /// The height the BEV detector does not estimate, metres (a passenger car's).
    public static let vehicleHeight: Float = 1.6

    /// A BEV box as a record: class 0 (vehicle), the score clamped to 0…1, the centre at half
    /// `height` above the sensor's ground plane, length and width at least 0.1 m (records need
    /// sizes > 0).
    public init(_ b: BEVBox, height: Float = Detection.vehicleHeight) {
        self.init(
            classID: 0, score: min(max(b.score, 0), 1), center: SIMD3(b.x, b.y, height / 2),
            size: SIMD3(max(b.length, 0.1), max(b.width, 0.1), height), yaw: b.yaw)
    }

    /// The record's BEV box: centre x, y, length, width, yaw and score.
    public var bevBox: BEVBox {
        BEVBox(x: center.x, y: center.y, length: size.x, width: size.y, yaw: yaw, score: score)
    }
}
