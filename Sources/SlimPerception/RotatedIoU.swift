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

/// How a detector's boxes from several sources become one list (a model file's `decode.merge`;
/// training/slimsplit_train/coop.py `merge_boxes` is the reference).
public enum BoxMerge: String, Sendable, CaseIterable {
    /// Greedy NMS: of the boxes of one object, the highest-scoring one's geometry survives.
    case nms
    /// NMS, then every kept box becomes the score-weighted mean of the boxes overlapping it by at
    /// least `iou` (itself included): several views of one object average their errors out.
    case weighted

    /// The overlap that makes two boxes views of one object, for `weighted`.
    public static let iou: Float = 0.3
    /// The fused head's boxes are merged only with boxes of agents whose data was captured at most
    /// this long before the ego's (a car at 14 m/s moves 0.7 m in 50 ms): a late agent's boxes are
    /// where its objects were.
    public static let maxAgeSeconds: Float = 0.05

    /// One list of `boxes` (one frame, one frame of reference, from any number of agents).
    public func merge(_ boxes: [BEVBox], nmsIoU: Float) -> [BEVBox] {
        let kept = RotatedIoU.nms(boxes, threshold: nmsIoU)
        return self == .weighted ? RotatedIoU.weightedMean(kept, of: boxes, iou: Self.iou, nmsIoU: nmsIoU) : kept
    }
}

extension RotatedIoU {
    /// Each box of `kept` becomes the score-weighted mean of the boxes of `boxes` that overlap it by
    /// at least `iou` (a kept box is expected among `boxes`; one with no overlap stays as it is):
    /// centre, length and width averaged, the axis averaged as a double angle (sin 2ψ, cos 2ψ) and
    /// turned to the kept box's heading (nearest multiple of π); score unchanged. Then NMS at
    /// `nmsIoU`, since moved boxes may overlap.
    public static func weightedMean(_ kept: [BEVBox], of boxes: [BEVBox], iou threshold: Float, nmsIoU: Float)
        -> [BEVBox]
    {
        guard !kept.isEmpty, !boxes.isEmpty else { return kept }
        let merged = kept.map { k -> BEVBox in
            var (sw, x, y, l, w, s2, c2): (Float, Float, Float, Float, Float, Float, Float) = (0, 0, 0, 0, 0, 0, 0)
            for b in boxes where iou(k, b) >= threshold {
                sw += b.score
                x += b.score * b.x
                y += b.score * b.y
                l += b.score * b.length
                w += b.score * b.width
                s2 += b.score * sin(2 * b.yaw)
                c2 += b.score * cos(2 * b.yaw)
            }
            guard sw > 0 else { return k }
            let axis = 0.5 * atan2(s2 / sw, c2 / sw)
            let yaw = axis + Float.pi * ((k.yaw - axis) / Float.pi).rounded()
            return BEVBox(x: x / sw, y: y / sw, length: l / sw, width: w / sw, yaw: yaw, score: k.score)
        }
        return nms(merged, threshold: nmsIoU)
    }
}
