import SlimSensors
import SlimWire

/// Synthetic quantized feature maps shaped like a BEV encoder's output: most cells empty
/// (value 0 after ReLU, zero point 0), occupied cells in blobs with smooth values. Stands in
/// for the encoder until the neural engine produces real features.
public struct SyntheticFeatures {
    public let channels: Int, height: Int, width: Int, bits: Int
    public var dense: [UInt8]
    public var mask: [UInt8]
    private var rng: SimRandom
    private let occupancy: Double

    public init(channels: Int, height: Int, width: Int, bits: Int, occupancy: Double, seed: UInt64) {
        self.channels = channels
        self.height = height
        self.width = width
        self.bits = bits
        self.occupancy = occupancy
        dense = [UInt8](repeating: 0, count: channels * height * width)
        mask = [UInt8](repeating: 0, count: CellMask.byteCount(cells: height * width))
        rng = SimRandom(state: seed)
        next()
    }

    /// Fills `dense` and `mask` with the next frame (no allocation).
    public mutating func next() {
        let cells = height * width
        let maxQ = (1 << bits) - 1
        for i in 0..<mask.count { mask[i] = 0 }
        for c in 0..<channels {
            let base = c * cells
            for i in 0..<cells { dense[base + i] = 0 }
        }
        let target = Int(occupancy * Double(cells))
        var filled = 0
        while filled < target {
            // A blob: a small rectangle of occupied cells, like a car or a wall in BEV.
            let y0 = Int(rng.next() % UInt64(height))
            let x0 = Int(rng.next() % UInt64(width))
            let h = 1 + Int(rng.next() % 4)
            let w = 1 + Int(rng.next() % 6)
            for y in y0..<min(height, y0 + h) {
                for x in x0..<min(width, x0 + w) {
                    let i = y * width + x
                    if !CellMask.contains(mask, i) { filled += 1 }
                    CellMask.insert(i, into: &mask)
                    let r = rng.next()
                    for c in 0..<channels {
                        let v = Int((r >> UInt64(c % 56)) & 0xFF) * maxQ / 255
                        dense[c * cells + i] = UInt8(c % 3 == 0 ? 0 : v)  // ReLU zeroes some channels
                    }
                }
            }
        }
    }

    public func header(agentID: String, widthIndex: Int, masked: Bool, lz4: Bool) -> FeatureFrameHeader {
        FeatureFrameHeader(
            agentID: agentID, sequence: 0, captureTimeNs: 0, modelID: "synthetic",
            widthIndex: UInt8(widthIndex), bits: UInt8(bits), channels: channels, height: height, width: width,
            quant: .inline(
                scales: [Float](repeating: 0.05, count: channels), zeroPoints: [UInt8](repeating: 0, count: channels)),
            masked: masked, codec: lz4 ? .lz4 : .none)
    }
}
