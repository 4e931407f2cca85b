import Foundation
import SlimCore

/// One object of a late agent's message and where it has moved since: `box` in the agent's frame
/// at its capture time, `shift` (metres, the agent's frame) from there to where it is at the ego's
/// capture time.
public struct BoxMotion: Sendable, Equatable {
    public var box: BEVBox
    public var shift: SIMD2<Float>
    public init(box: BEVBox, shift: SIMD2<Float>) {
        self.box = box
        self.shift = shift
    }

    /// The box where its object is at the ego's time.
    public var now: BEVBox {
        var b = box
        b.x += shift.x
        b.y += shift.y
        return b
    }
}

/// Pairs the items of two lists one to one, closest first: each `(i, j)` (i < `first`, j <
/// `second`, i the outer loop) with a distance is a candidate (nil: may not pair), taken in order of
/// distance unless its i or j is already paired. The tracker's and the pose alignment's matching.
func closestPairs(_ first: Int, _ second: Int, distance: (Int, Int) -> Float?) -> [(i: Int, j: Int)] {
    var candidates: [(d: Float, i: Int, j: Int)] = []
    for i in 0..<first {
        for j in 0..<second {
            if let d = distance(i, j) { candidates.append((d, i, j)) }
        }
    }
    candidates.sort { $0.d < $1.d }
    var usedI = [Bool](repeating: false, count: first), usedJ = [Bool](repeating: false, count: second)
    var pairs: [(i: Int, j: Int)] = []
    for (_, i, j) in candidates where !usedI[i] && !usedJ[j] {
        usedI[i] = true
        usedJ[j] = true
        pairs.append((i, j))
    }
    return pairs
}

/// Estimates how fast each object of an agent's message moves, from the agent's own detections in
/// its consecutive messages, so that a message that arrives late can be moved to the ego's time.
///
/// Each message's boxes (the agent's frame) are matched with those of the agent's message before
/// (at most `maxGapSeconds` older, moved into the new frame with the two poses the agent sent):
/// greedily by centre distance, within `gate + maxSpeed · dt` metres and with headings within 30°
/// (either direction). A vehicle moves along its heading, so the speed is the displacement
/// projected on the new box's heading over dt (signed; the lateral part is detection noise),
/// averaged with the matched box's earlier speed when it had one, and clamped to ±`maxSpeed`.
/// Speeds below `deadband` count as 0 (a parked car's jitter is not motion). Only the first
/// `maxTracked` boxes of a message are matched (the rest get speed 0): a hostile agent's 4,096
/// boxes cost at most `maxTracked`² distance checks a message, not 16 million.
///
/// Only the agent's own pose *deltas* between its messages are used, never another agent's pose:
/// an error in where the server places the agent (the evaluation's pose noise) does not enter the
/// speeds. Not thread-safe; the fusion service calls it under its lock.
public struct MotionTracker: Sendable {
    public var deadband: Float = 1.5
    public var maxSpeed: Float = 30
    public var gate: Float = 1.0
    public var maxGapSeconds: Float = 0.35
    public var maxTracked = 256
    /// Records kept per agent (messages may be looked at out of order within a pass).
    public var depth = 4

    struct Record {
        var captureNs: UInt64
        var position: SIMD2<Float>, yaw: Float
        var boxes: [BEVBox]
        var speeds: [Float?]
    }
    private var records: [String: [Record]] = [:]

    public init() {}

    /// The signed speed (m/s along each box's heading; 0 when unknown or under the deadband) of
    /// each of `boxes`, the detections of `agent`'s message captured at `captureNs` from `position`
    /// and `yaw` (as the agent sent them). The first call for a message computes and keeps them;
    /// later calls for the same message return the same values.
    public mutating func speeds(
        agent: String, captureNs: UInt64, position: SIMD2<Float>, yaw: Float, boxes: [BEVBox]
    ) -> [Float] {
        var list = records[agent] ?? []
        if let r = list.first(where: { $0.captureNs == captureNs }), r.boxes.count == boxes.count {
            return r.speeds.map { $0.map { abs($0) < deadband ? 0 : $0 } ?? 0 }
        }
        var speeds = [Float?](repeating: nil, count: boxes.count)
        if let before = list.filter({ $0.captureNs < captureNs }).max(by: { $0.captureNs < $1.captureNs }) {
            let dt = Float(captureNs - before.captureNs) / 1e9
            if dt > 0, dt <= maxGapSeconds {
                let earlier = before.boxes.prefix(maxTracked).map {
                    $0.moved(from: before.position, before.yaw, to: position, yaw)
                }
                let reach = gate + maxSpeed * dt
                let pairs = closestPairs(min(boxes.count, maxTracked), earlier.count) { i, j in
                    let (b, p) = (boxes[i], earlier[j])
                    let d = ((b.x - p.x) * (b.x - p.x) + (b.y - p.y) * (b.y - p.y)).squareRoot()
                    // Headings within 30°, either way round (a detector's yaw may flip by π).
                    return d <= reach && abs(cos(b.yaw - p.yaw)) >= 0.866 ? d : nil
                }
                for (i, j) in pairs {
                    let (b, p) = (boxes[i], earlier[j])
                    let h = SIMD2(cos(b.yaw), sin(b.yaw))
                    var v = ((b.x - p.x) * h.x + (b.y - p.y) * h.y) / dt
                    if let s = before.speeds[j] {
                        // The earlier speed was along the earlier box's heading: the same sign
                        // if the two headings agree, the other if the detector flipped it.
                        v = 0.5 * v + 0.5 * (cos(b.yaw - p.yaw) >= 0 ? s : -s)
                    }
                    speeds[i] = min(max(v, -maxSpeed), maxSpeed)
                }
            }
        }
        list.removeAll { $0.captureNs == captureNs }
        list.append(Record(captureNs: captureNs, position: position, yaw: yaw, boxes: boxes, speeds: speeds))
        list.sort { $0.captureNs < $1.captureNs }
        if list.count > depth { list.removeFirst(list.count - depth) }
        records[agent] = list
        return speeds.map { $0.map { abs($0) < deadband ? 0 : $0 } ?? 0 }
    }

    /// Every box of a message `age` seconds older than the ego's with its shift to the ego's
    /// time (zero for a box whose speed is 0).
    public mutating func motions(
        agent: String, captureNs: UInt64, position: SIMD2<Float>, yaw: Float, boxes: [BEVBox], age: Float
    ) -> [BoxMotion] {
        let v = speeds(agent: agent, captureNs: captureNs, position: position, yaw: yaw, boxes: boxes)
        return zip(boxes, v).map { b, s in BoxMotion(box: b, shift: SIMD2(cos(b.yaw), sin(b.yaw)) * (s * age)) }
    }

    /// Forgets an agent (it left, or restarted its numbering).
    public mutating func forget(agent: String) { records[agent] = nil }
}

extension BEVBox {
    /// True if `p` (same frame) lies within the box grown by `margin` metres on every side.
    func contains(_ p: SIMD2<Float>, margin: Float) -> Bool {
        let (c, s) = (cos(yaw), sin(yaw))
        let d = SIMD2(p.x - x, p.y - y)
        return abs(c * d.x + s * d.y) <= length / 2 + margin && abs(-s * d.x + c * d.y) <= width / 2 + margin
    }
}
