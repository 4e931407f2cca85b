import Foundation
import SlimCore

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
