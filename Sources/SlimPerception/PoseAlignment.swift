import Foundation
import SlimCore

/// Corrects where the server places another agent from what both agents detect: the shift of the
/// ego's plane that brings the other agent's boxes (placed by the pose it reported) onto the ego's
/// own boxes of the same objects. An error in the reported position moves every one of that
/// agent's boxes the same way; the detectors' own errors do not agree from box to box, so several
/// matched objects pin it down (the idea of CoAlign's agent–object pose graph, reduced to one pair
/// of agents and a least-squares fit).
///
/// `correction` matches the confident boxes (score ≥ `minScore`, the `maxBoxes` best of each side)
/// greedily by centre distance within `matchRadius`, takes the mean offset of the pairs, matches
/// again within `refineRadius` after applying it and takes the mean again. It gives nil — leave
/// the pose as reported — with fewer than `minMatches` pairs or a shift over `maxShift` metres.
/// Only the position is corrected: a rotation fitted to 3–6 boxes a few metres apart was worse
/// than none (its angle error, times the distance to the far objects, exceeded the 0.2–0.4° of
/// yaw noise it was to remove; docs/evaluation.md).
///
/// The fit is only as good as the two detectors agree: with exact poses its shifts have a median of
/// 0.26 m (the agents' boxes of one car differ by that much, each biased toward its own sensor).
/// It pays where reported positions are worse than that, which is why the fusion service has it
/// off by default.
public struct PoseAlignment: Sendable {
    public var matchRadius: Float = 2.5
    public var refineRadius: Float = 1.0
    public var minScore: Float = 0.3
    public var minMatches = 3
    public var maxShift: Float = 1.5
    public var maxBoxes = 64

    public init() {}

    /// The shift (ego frame, metres) that brings `theirs` onto `ours` (both in the ego's frame),
    /// with the number of pairs it rests on; nil when there is none to trust.
    public func correction(ours: [BEVBox], theirs: [BEVBox]) -> (shift: SIMD2<Float>, matches: Int)? {
        let a = confident(ours), b = confident(theirs)
        guard a.count >= minMatches, b.count >= minMatches,
            let first = fit(ours: a, theirs: b, moved: .zero, radius: matchRadius),
            let fit = fit(ours: a, theirs: b, moved: first.shift, radius: refineRadius)
        else { return nil }
        let size = (fit.shift * fit.shift).sum().squareRoot()
        guard size.isFinite, size <= maxShift else { return nil }
        return fit
    }

    private func confident(_ boxes: [BEVBox]) -> [SIMD2<Float>] {
        boxes.filter { $0.score >= minScore && $0.x.isFinite && $0.y.isFinite }
            .sorted { $0.score > $1.score }.prefix(maxBoxes).map { SIMD2($0.x, $0.y) }
    }

    /// Pairs `theirs` (moved by `moved`) with `ours` within `radius`; the mean offset of the
    /// unmoved `theirs` to their pairs.
    private func fit(ours: [SIMD2<Float>], theirs: [SIMD2<Float>], moved: SIMD2<Float>, radius: Float)
        -> (shift: SIMD2<Float>, matches: Int)?
    {
        let pairs = closestPairs(theirs.count, ours.count) { j, i in
            let q = theirs[j] + moved
            let d = ((ours[i] - q) * (ours[i] - q)).sum().squareRoot()
            return d <= radius ? d : nil
        }
        guard pairs.count >= minMatches else { return nil }
        let sum = pairs.reduce(SIMD2<Float>.zero) { $0 + ours[$1.j] - theirs[$1.i] }
        return (sum / Float(pairs.count), pairs.count)
    }
}
