import SlimEngine

/// BEV average precision as `training/evaluate.py` computes it: detections matched greedily by
/// score to unused ground-truth boxes at an IoU threshold; AP = area under the interpolated
/// precision–recall curve (all points), pooled over every ego frame added.
public struct AveragePrecision: Sendable {
    public static let thresholds: [Float] = [0.3, 0.5, 0.7]
    private var scores: [Float] = []
    private var truePositive: [[Bool]] = Self.thresholds.map { _ in [] }
    /// Per threshold: detections left out of this AP (matched to ground truth outside a subset).
    private var ignored: [[Bool]] = Self.thresholds.map { _ in [] }
    public private(set) var groundTruth = 0

    public init() {}

    public mutating func add(detections: [BEVBox], groundTruth gt: [BEVBox]) {
        add(
            scores: detections.map(\.score), truePositive: Self.match(detections: detections, groundTruth: gt),
            groundTruth: gt.count)
    }

    /// Adds one frame already matched (`match`): scores, true-positive flags per threshold, and
    /// the frame's ground-truth count.
    public mutating func add(scores s: [Float], truePositive tp: [[Bool]], groundTruth n: Int) {
        precondition(tp.count == Self.thresholds.count && tp.allSatisfy { $0.count == s.count })
        groundTruth += n
        for ti in truePositive.indices {
            truePositive[ti] += tp[ti]
            ignored[ti] += repeatElement(false, count: s.count)
        }
        scores += s
    }

    /// Adds one frame for the AP of a subset of the ground truth (objects one agent sees, a range
    /// bin): only ground truth with `counted` true counts; a detection matched to other ground
    /// truth is left out, an unmatched one is a false positive where `unmatchedCounts` holds
    /// (e.g. it lies in the range bin) and left out elsewhere.
    public mutating func add(
        detections: [BEVBox], groundTruth gt: [BEVBox], counted: [Bool], unmatchedCounts: (BEVBox) -> Bool
    ) {
        precondition(counted.count == gt.count)
        let matched = Self.matches(detections: detections, groundTruth: gt)
        groundTruth += counted.count { $0 }
        scores += detections.map(\.score)
        for ti in Self.thresholds.indices {
            for (d, g) in matched[ti].enumerated() {
                truePositive[ti].append(g.map { counted[$0] } ?? false)
                ignored[ti].append(g.map { !counted[$0] } ?? !unmatchedCounts(detections[d]))
            }
        }
    }

    /// One frame's greedy matching: per threshold, whether each detection is a true positive.
    public static func match(detections: [BEVBox], groundTruth gt: [BEVBox]) -> [[Bool]] {
        matches(detections: detections, groundTruth: gt).map { $0.map { $0 != nil } }
    }

    /// Greedy matching by score: per threshold, the ground truth each detection matched, if any.
    public static func matches(detections: [BEVBox], groundTruth gt: [BEVBox]) -> [[Int?]] {
        let order = detections.indices.sorted {
            detections[$0].score > detections[$1].score || (detections[$0].score == detections[$1].score && $0 < $1)
        }
        let iou = detections.map { d in gt.map { RotatedIoU.iou(d, $0) } }
        return thresholds.map { t in
            var used = [Bool](repeating: false, count: gt.count)
            var match = [Int?](repeating: nil, count: detections.count)
            for d in order where !gt.isEmpty {
                var best = -1
                var bestIoU: Float = -1
                for g in gt.indices where !used[g] && iou[d][g] > bestIoU {
                    bestIoU = iou[d][g]
                    best = g
                }
                if best >= 0, bestIoU >= t {
                    used[best] = true
                    match[d] = best
                }
            }
            return match
        }
    }

    /// Pools another accumulator's detections and ground truth into this one.
    public mutating func merge(_ o: AveragePrecision) {
        groundTruth += o.groundTruth
        scores += o.scores
        for i in truePositive.indices {
            truePositive[i] += o.truePositive[i]
            ignored[i] += o.ignored[i]
        }
    }

    /// AP in percent at each threshold (nan without ground truth).
    public var percent: [Float] {
        zip(truePositive, ignored).map { tp, skip in
            guard groundTruth > 0 else { return .nan }
            let o = scores.indices.sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }
            var rec: [Float] = [0]
            var prec: [Float] = [0]
            var ctp: Float = 0
            var cfp: Float = 0
            for i in o where !skip[i] {
                if tp[i] { ctp += 1 } else { cfp += 1 }
                rec.append(ctp / Float(groundTruth))
                prec.append(ctp / max(ctp + cfp, 1e-9))
            }
            rec.append(1)
            prec.append(0)
            for i in stride(from: prec.count - 2, through: 0, by: -1) { prec[i] = max(prec[i], prec[i + 1]) }
            var ap: Float = 0
            for i in 0..<(rec.count - 1) where rec[i + 1] != rec[i] { ap += (rec[i + 1] - rec[i]) * prec[i + 1] }
            return 100 * ap
        }
    }
}
