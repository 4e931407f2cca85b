import Foundation

/// A detected or ground-truth box in the BEV plane of one frame: what the detector outputs, what
/// a recording's ground truth gives, what late fusion merges (one box type for all of them; the
/// wire's 3-D record is `Detection`).
public struct BEVBox: Sendable, Equatable {
    public var x: Float, y: Float
    /// Length (along yaw) and width, metres.
    public var length: Float, width: Float
    public var yaw: Float
    public var score: Float

    public init(x: Float, y: Float, length: Float, width: Float, yaw: Float, score: Float = 1) {
        self.x = x
        self.y = y
        self.length = length
        self.width = width
        self.yaw = yaw
        self.score = score
    }

    /// Corners, counter-clockwise.
    public var corners: [SIMD2<Float>] {
        let c = cos(yaw)
        let s = sin(yaw)
        return [(1, 1), (-1, 1), (-1, -1), (1, -1)].map { (a: Float, b: Float) in
            let dx = a * length / 2
            let dy = b * width / 2
            return SIMD2(x + c * dx - s * dy, y + s * dx + c * dy)
        }
    }

    /// The box, given in a frame at `from` with heading `fromYaw`, in a frame at `to` with heading
    /// `toYaw` (both poses in one common frame, e.g. the world).
    public func moved(from: SIMD2<Float>, _ fromYaw: Float, to: SIMD2<Float>, _ toYaw: Float) -> BEVBox {
        let world = Pose2D(from, yaw: fromYaw).toCommon(SIMD2(x, y))
        var w = self
        w.x = world.x
        w.y = world.y
        w.yaw = yaw + fromYaw
        return toYaw == 0 && to == .zero ? w : w.transformed(intoFrameAt: to, heading: toYaw)
    }

    /// The box seen from a frame at `origin` with heading `heading` (both in this box's frame).
    public func transformed(intoFrameAt origin: SIMD2<Float>, heading: Float) -> BEVBox {
        let frame = Pose2D(origin, yaw: heading)
        let p = frame.toLocal(SIMD2(x, y))
        var out = self
        out.x = p.x
        out.y = p.y
        out.yaw = frame.toLocal(heading: yaw)
        return out
    }
}
