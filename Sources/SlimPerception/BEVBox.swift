import Foundation
import SlimEngine

/// A detected or ground-truth box in the BEV plane of one frame.
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
        let c = cos(fromYaw)
        let s = sin(fromYaw)
        let world = SIMD2(from.x + c * x - s * y, from.y + s * x + c * y)
        var w = self
        w.x = world.x
        w.y = world.y
        w.yaw = yaw + fromYaw
        return toYaw == 0 && to == .zero ? w : w.transformed(intoFrameAt: to, heading: toYaw)
    }

    /// The box seen from a frame at `origin` with heading `heading` (both in this box's frame).
    public func transformed(intoFrameAt origin: SIMD2<Float>, heading: Float) -> BEVBox {
        let c = cos(-heading)
        let s = sin(-heading)
        let dx = x - origin.x
        let dy = y - origin.y
        var out = self
        out.x = c * dx - s * dy
        out.y = s * dx + c * dy
        out.yaw = atan2(sin(yaw - heading), cos(yaw - heading))
        return out
    }
}

/// Rotated-box geometry: intersection-over-union in the BEV plane and greedy NMS.
public enum RotatedIoU {
    /// IoU of two boxes (convex polygon clipping, Sutherland–Hodgman).
    public static func iou(_ a: BEVBox, _ b: BEVBox) -> Float {
        let r =
            (a.length * a.length + a.width * a.width).squareRoot() / 2 + (b.length * b.length + b.width * b.width)
            .squareRoot() / 2
        let d = SIMD2(a.x - b.x, a.y - b.y)
        guard (d * d).sum() < r * r else { return 0 }
        let inter = area(clip(a.corners, by: b.corners))
        let union = a.length * a.width + b.length * b.width - inter
        return union > 0 ? inter / union : 0
    }

    static func area(_ p: [SIMD2<Float>]) -> Float {
        guard p.count >= 3 else { return 0 }
        var s: Float = 0
        for i in 0..<p.count {
            let a = p[i]
            let b = p[(i + 1) % p.count]
            s += a.x * b.y - a.y * b.x
        }
        return abs(s) / 2
    }

    static func clip(_ subject: [SIMD2<Float>], by clipper: [SIMD2<Float>]) -> [SIMD2<Float>] {
        var out = subject
        for i in 0..<clipper.count {
            guard !out.isEmpty else { break }
            let a = clipper[i]
            let b = clipper[(i + 1) % clipper.count]
            let input = out
            out = []
            func inside(_ p: SIMD2<Float>) -> Bool { (b.x - a.x) * (p.y - a.y) - (b.y - a.y) * (p.x - a.x) >= 0 }
            func cross(_ p: SIMD2<Float>, _ q: SIMD2<Float>) -> SIMD2<Float> {
                let r = q - p
                let s = b - a
                let den = r.x * s.y - r.y * s.x
                guard abs(den) > 1e-12 else { return p }
                let t = ((a.x - p.x) * s.y - (a.y - p.y) * s.x) / den
                return p + t * r
            }
            for j in 0..<input.count {
                let p = input[j]
                let q = input[(j + 1) % input.count]
                let pin = inside(p)
                let qin = inside(q)
                if pin { out.append(p) }
                if pin != qin { out.append(cross(p, q)) }
            }
        }
        return out
    }

    /// Greedy NMS: keeps boxes in descending score order, dropping any whose IoU with a kept box
    /// exceeds `threshold`.
    public static func nms(_ boxes: [BEVBox], threshold: Float) -> [BEVBox] {
        let order = boxes.indices.sorted {
            boxes[$0].score > boxes[$1].score || (boxes[$0].score == boxes[$1].score && $0 < $1)
        }
        var kept: [BEVBox] = []
        var removed = [Bool](repeating: false, count: boxes.count)
        for (k, i) in order.enumerated() where !removed[k] {
            kept.append(boxes[i])
            for (m, j) in order.enumerated().dropFirst(k + 1) where !removed[m] && iou(boxes[i], boxes[j]) > threshold {
                removed[m] = true
            }
        }
        return kept
    }
}
