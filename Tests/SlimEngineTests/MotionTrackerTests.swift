import Foundation
import Testing

@testable import SlimPerception

/// `MotionTracker` on an agent that drives 1 m forward per 100 ms frame past a car that drives
/// 10 m/s the same way, a car that drives 8 m/s the other way (detected with its yaw flipped by
/// π in one frame) and a parked car: the speeds come from the agent's own pose deltas and its
/// boxes, so the second message's boxes predicted 100 ms ahead land where the third shows them.
@Suite("Motion compensation: object speeds from an agent's consecutive messages")
struct MotionTrackerTests {
    /// The agent's message at frame `k` (10 Hz): its pose and the three cars in its frame, with a
    /// few centimetres of detection jitter.
    static func message(_ k: Int, flipOncoming: Bool = false) -> (ns: UInt64, position: SIMD2<Float>, boxes: [BEVBox]) {
        let t = Float(k) * 0.1
        let agent = SIMD2<Float>(t * 10, 0)
        let jitter: Float = k % 2 == 0 ? 0.03 : -0.03
        let ahead = BEVBox(x: 12 + t * 10 - agent.x + jitter, y: 3.5, length: 4.5, width: 1.9, yaw: 0, score: 0.9)
        let oncoming = BEVBox(
            x: 30 - t * 8 - agent.x, y: -3.5 + jitter, length: 4.6, width: 1.9, yaw: flipOncoming ? 0 : .pi, score: 0.8)
        let parked = BEVBox(x: 20 - agent.x - jitter, y: 7, length: 4.4, width: 1.8, yaw: 0.01, score: 0.7)
        return (UInt64(k) * 100_000_000, agent, [ahead, oncoming, parked])
    }

    @Test func speedsFromConsecutiveMessages() {
        var tracker = MotionTracker()
        let m0 = Self.message(0), m1 = Self.message(1), m2 = Self.message(2, flipOncoming: true)
        let first = tracker.speeds(agent: "a", captureNs: m0.ns, position: m0.position, yaw: 0, boxes: m0.boxes)
        #expect(first == [0, 0, 0], "no earlier message: no speed")
        let v1 = tracker.speeds(agent: "a", captureNs: m1.ns, position: m1.position, yaw: 0, boxes: m1.boxes)
        #expect(abs(v1[0] - 10) < 1, "\(v1)")
        #expect(abs(v1[1] - 8) < 1, "along its own heading (π): \(v1)")
        #expect(v1[2] == 0, "a parked car's jitter is under the deadband: \(v1)")
        // The same message again (another ego's pass): the same speeds, not a new estimate.
        #expect(tracker.speeds(agent: "a", captureNs: m1.ns, position: m1.position, yaw: 0, boxes: m1.boxes) == v1)
        // Message 1 fused 100 ms late: its moving cars predicted to frame 2's time.
        let moved = tracker.motions(
            agent: "a", captureNs: m1.ns, position: m1.position, yaw: 0, boxes: m1.boxes, age: 0.1)
        #expect(moved.count == 3 && moved[2].shift == .zero)
        for (i, m) in moved.enumerated() {
            // Where frame 2 shows the car, in message 1's frame.
            let now = m2.boxes[i].moved(from: m2.position, 0, to: m1.position, 0)
            let predicted = SIMD2(m.box.x + m.shift.x, m.box.y + m.shift.y)
            let stale = SIMD2(m.box.x, m.box.y)
            let err = ((predicted - SIMD2(now.x, now.y)) * (predicted - SIMD2(now.x, now.y))).sum().squareRoot()
            let staleErr = ((stale - SIMD2(now.x, now.y)) * (stale - SIMD2(now.x, now.y))).sum().squareRoot()
            #expect(err < 0.15, "car \(i): \(err) m from where it is, \(staleErr) m unmoved")
            if i < 2 { #expect(staleErr > 0.7) }
        }
        // A message 100 ms newer than the ego's frame is moved back: frame 1 seen from frame 0's time.
        let back = tracker.motions(
            agent: "a", captureNs: m1.ns, position: m1.position, yaw: 0, boxes: m1.boxes, age: -0.1)
        let then = m0.boxes[0].moved(from: m0.position, 0, to: m1.position, 0)
        #expect(abs(back[0].box.x + back[0].shift.x - then.x) < 0.15, "\(back[0]) vs \(then)")
        // Frame 2 reports the oncoming car with its yaw flipped: still matched, its speed now
        // along yaw 0 (negative), smoothed with frame 1's.
        let v2 = tracker.speeds(agent: "a", captureNs: m2.ns, position: m2.position, yaw: 0, boxes: m2.boxes)
        #expect(abs(v2[0] - 10) < 1 && abs(v2[1] + 8) < 1 && v2[2] == 0, "\(v2)")
    }

    @Test func anotherAgentOrAGapGivesNoSpeed() {
        var tracker = MotionTracker()
        let m0 = Self.message(0), m5 = Self.message(5)
        _ = tracker.speeds(agent: "a", captureNs: m0.ns, position: m0.position, yaw: 0, boxes: m0.boxes)
        #expect(tracker.speeds(agent: "b", captureNs: m5.ns, position: m5.position, yaw: 0, boxes: m5.boxes) == [0, 0, 0])
        #expect(tracker.speeds(agent: "a", captureNs: m5.ns, position: m5.position, yaw: 0, boxes: m5.boxes) == [0, 0, 0],
            "500 ms apart: older than maxGapSeconds")
    }

    @Test func aHostileMessageIsTrackedOnlyInPart() {
        var tracker = MotionTracker()
        // 4,096 boxes on one spot, twice, the second 1 m further: every pair is within reach.
        let crowd = [BEVBox](repeating: BEVBox(x: 5, y: 0, length: 4, width: 2, yaw: 0), count: 4096)
        let moved = crowd.map { var b = $0; b.x += 1; return b }
        _ = tracker.speeds(agent: "h", captureNs: 0, position: .zero, yaw: 0, boxes: crowd)
        let v = tracker.speeds(agent: "h", captureNs: 100_000_000, position: .zero, yaw: 0, boxes: moved)
        #expect(v.count == 4096)
        #expect(v.prefix(256).allSatisfy { abs($0 - 10) < 1e-3 }, "the first 256 matched: 10 m/s")
        #expect(v.dropFirst(256).allSatisfy { $0 == 0 }, "the rest untracked")
    }
}
