import Foundation
import SlimCore
import SlimEngine
import SlimPerception
import SlimSensors
import SlimWire

/// `slimsplit agent --report FILE`: one JSON line per frame the agent replays, written when the
/// frame's detections come back or when it gives up waiting (2 s after the deadline).
///
/// A line holds the configuration the frame was sent at, its bytes, the goodput estimate then,
/// the latency from the frame's capture time (`t_s` from the start, `wall_s` on the wall clock)
/// to its detections, whether that met the deadline,
/// and the frame scored against the recording's ground truth by the V2X convention of
/// `training/evaluate.py`: `scores` and per IoU threshold 0.3 / 0.5 / 0.7 the true-positive flags
/// (`tp30`, `tp50`, `tp70`), and `n_gt`. A frame whose detections missed the deadline (or never
/// came) scores no detections: late boxes are of no use to a moving vehicle. Pooling lines over
/// any time window gives that window's AP (Benchmarks/shaped_link_report.py).
///
/// Benchmarking aid: it allocates per frame, so it is off unless asked for.
public final class FrameReport: Sendable {
    struct Sent: Sendable {
        var frame: Int
        var dueNs: UInt64
        /// Wall-clock time the frame was sent (for lining up with an external trace), ns.
        var wallNs: UInt64
        /// Sent as the agent's own detections (the boxes rung) rather than a map.
        var boxes: Bool
        var widthIndex: Int, bits: Int, threshold: Float
        var bytes: Int
        var goodputBytesPerSecond: Double?
        var rttNs: UInt64
        var truth: [BEVBox], own: [BEVBox]
    }

    /// Frames waiting for their Result, the totals so far, and the file (written under the lock).
    private struct State: Sendable {
        var pending: [UInt64: Sent] = [:]
        var frames = 0, missed = 0
        var ap = AveragePrecision()
    }
    private let state = Locked(State())
    private let out: FileHandle
    private let startNs: UInt64
    public let deadlineNs: UInt64

    public init(path: String, deadlineSeconds: Double, startNs: UInt64) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path)
        else {
            throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path])
        }
        out = h
        deadlineNs = UInt64(deadlineSeconds * 1e9)
        self.startNs = startNs
    }

    func sent(sequence: UInt64, _ s: Sent) {
        state.withLock { $0.pending[sequence] = s }
    }

    /// A Result from the server (on the agent's receiving task).
    public func result(_ r: ResultMessage, atNs now: UInt64) {
        state.withLock { st in
            guard let s = st.pending.removeValue(forKey: r.sequence) else { return }
            write(s, latencyNs: now &- s.dueNs, detections: r.detections.map(\.bevBox), into: &st)
        }
    }

    /// Frames still without a result 2 s past their deadline are written as missed.
    func expire(atNs now: UInt64, all: Bool = false) {
        state.withLock { st in
            for (seq, s) in st.pending.sorted(by: { $0.key < $1.key })
            where all || now > s.dueNs + deadlineNs + 2_000_000_000 {
                st.pending[seq] = nil
                write(s, latencyNs: nil, detections: [], into: &st)
            }
        }
    }

    /// Per-frame totals: frames, deadline misses, and AP@0.3/0.5/0.7 of all frames.
    public var summary: (frames: Int, missed: Int, ap: [Float]) {
        state.withLock { ($0.frames, $0.missed, $0.ap.percent) }
    }

    private func write(_ s: Sent, latencyNs: UInt64?, detections: [BEVBox], into st: inout State) {
        let onTime = latencyNs.map { $0 <= deadlineNs } ?? false
        let dets = onTime ? CooperativeSession.filter(detections, own: s.own) : []
        let tp = AveragePrecision.match(detections: dets, groundTruth: s.truth)
        st.ap.add(scores: dets.map(\.score), truePositive: tp, groundTruth: s.truth.count)
        st.frames += 1
        if !onTime { st.missed += 1 }
        func flags(_ v: [Bool]) -> String { "[" + v.map { $0 ? "1" : "0" }.joined(separator: ",") + "]" }
        let fields: [String] = [
            "\"t_s\":\(num(Double(s.dueNs &- startNs) / 1e9, 3))",
            "\"wall_s\":\(num(Double(s.wallNs) / 1e9, 3))",
            "\"frame\":\(s.frame)",
            "\"payload\":\"\(s.boxes ? "boxes" : "map")\"", "\"width_index\":\(s.widthIndex)", "\"bits\":\(s.bits)",
            "\"threshold\":\(num(Double(s.threshold), 4))",
            "\"bytes\":\(s.bytes)",
            "\"goodput_kbit_s\":\(s.goodputBytesPerSecond.map { num($0 * 8 / 1000, 1) } ?? "null")",
            "\"rtt_ms\":\(num(Double(s.rttNs) / 1e6, 2))",
            "\"latency_ms\":\(latencyNs.map { num(Double($0) / 1e6, 2) } ?? "null")",
            "\"missed\":\(!onTime)",
            "\"n_gt\":\(s.truth.count)",
            "\"scores\":[\(dets.map { num(Double($0.score), 4) }.joined(separator: ","))]",
            "\"tp30\":\(flags(tp[0]))", "\"tp50\":\(flags(tp[1]))", "\"tp70\":\(flags(tp[2]))",
        ]
        out.write(Data(("{" + fields.joined(separator: ",") + "}\n").utf8))
    }

    public func close() {
        expire(atNs: 0, all: true)
        try? out.close()
    }
}

/// A JSON number (null when not finite).
private func num(_ v: Double, _ digits: Int) -> String { v.isFinite ? fmt(v, digits) : "null" }
