import ArgumentParser
import Foundation
import Logging
import SlimAgent
import SlimEngine
import SlimPerception
import SlimPipeline

struct EvalCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract:
            "Run agents and the fusion server over a recording on real sockets; print AP, bytes per frame and latency.",
        discussion: """
            Every recorded agent becomes a SlimSplit agent (Curve on, loopback TCP) replaying its LiDAR in lock-step;
            the server fuses each frame once all agents sent it. AP@0.3/0.5/0.7 (BEV, rotated IoU) follows
            training/evaluate.py: each agent in turn is the ego, ground truth within its ±32 m, seen by at least one
            agent, not its own vehicle. "alone" runs the same model on the ego's features only.
              slimsplit eval --recording Tests/Fixtures/sample.mcap --json
              slimsplit eval --model Models/slimsplit-deep.safetensors --budget-bytes 1398 --pose-noise 0.2,0.2 --latency-ms 100
            Methods: intermediate (maps: the model's feature maps, or a deep-fusion model's messages), late (every
            agent's own boxes), single (each agent's own detections, nothing shared; measured in the same run).
            """)

    @Option(help: "Recording (MCAP) with ground truth; repeat it to pool several (AP over all their ego-frames).")
    var recording: [String] = ["Tests/Fixtures/sample.mcap"]

    @Option(help: "Model file.")
    var model: String = "Models/slimsplit-deep.safetensors"

    @Option(help: "intermediate | late | single.")
    var method: String = "intermediate"

    @Option(
        help: """
            Bytes per agent-frame: run the most accurate configuration of the model's rate-accuracy table that \
            fits (width, bits, threshold); late fusion when none does. Overrides --width-index, --bits, --threshold.
            """)
    var budgetBytes: Int?

    @Option(help: "Width index (default: the widest).")
    var widthIndex: Int?

    @Option(help: "Bits per transmitted value.")
    var bits: Int = 8

    @Option(help: "scalar (per-channel codes of --bits bits) or codebook (the model's residual codebooks).")
    var payload: MessagePayload = .scalar

    @Option(
        help:
            "Sparsity threshold (0: send every cell): on the feature norm, or a deep-fusion model's heatmap probability.")
    var threshold: Float = 0

    @Option(help: "Fusion: attention or max.")
    var fusion: String = "attention"

    @Option(help: "Skip this many frames at the start (training/evaluate.py evaluates from frame 1).")
    var firstFrame: Int = 1

    @Flag(help: "Run the agents' encoder in float, as training/evaluate.py does (agents run int8).")
    var floatEncoder = false

    @Flag(help: "Run the server's backbone in float, as training/evaluate.py does (the server runs int8).")
    var floatServer = false

    @Flag(
        help: """
            Same as --method late. Late fusion, live: every agent runs the whole detector (int8, full width) and \
            sends its own boxes (the Boxes message, the adaptation's lowest rung); the server merges them.
            """)
    var lateFusion = false

    @Option(
        help: ArgumentHelp(
            "Pose noise on the other agents in each agent's fusion: σ metres per axis, σ degrees of yaw (V2XSet: 0.2,0.2).",
            valueName: "m,deg"))
    var poseNoise: String?

    @Option(
        help: "The other agents' latency in each agent's fusion: 0, or one frame of the recording (100 ms at 10 Hz).")
    var latencyMs: Double = 0

    @Flag(
        inversion: .prefixedNo,
        help: "Move what a late agent's message shows to the ego's time: each object by its speed, estimated by the server from the agent's consecutive messages (boxes rung and deep maps).")
    var motionCompensation = true

    @Flag(
        inversion: .prefixedNo,
        help: "Correct where the server places each other agent from the objects both detect (its boxes fitted onto the ego's own; boxes rung and deep maps). Pays where positions are off by more than about 0.3 m.")
    var poseAlignment = false

    @Option(
        help: ArgumentHelp(
            "How the server merges boxes: nms (one view's box per object) or weighted (a score-weighted mean of the views); default: the model file's decode.merge.",
            valueName: "nms|weighted"))
    var merge: BoxMerge?

    @Flag(help: "Print JSON.")
    var json = false

    @OptionGroup var log: LogOptions

    func run() async throws {
        var lo = log
        if lo.logLevel == "info" { lo.logLevel = "warning" }
        let logger = try lo.bootstrap(label: "slimsplit.eval")
        var config = try CooperativeSession.Config(
            recording: recording[0], model: model, bits: bits, threshold: threshold, payload: payload)
        config.widthIndex = widthIndex
        config.firstFrame = firstFrame
        config.floatEncoder = floatEncoder
        config.floatServer = floatServer
        guard ["intermediate", "late", "single"].contains(method) else {
            throw ValidationError("--method must be intermediate, late or single")
        }
        config.lateFusion = lateFusion || method == "late"
        var chosen: [String: Any]?
        if let budgetBytes {
            guard budgetBytes > 0 else { throw ValidationError("--budget-bytes must be positive") }
            let st = try Safetensors(contentsOf: model)
            guard let table = try RateAccuracyEntry.table(in: st, quantization: FeatureQuantization.all(in: st)) else {
                throw ValidationError("--budget-bytes: \(model) has no rate-accuracy table (metadata rate_accuracy)")
            }
            if let best = table.filter({ $0.bytes <= Double(budgetBytes) }).max(by: { $0.ap50 < $1.ap50 }) {
                (config.widthIndex, config.bits, config.threshold) = (best.widthIndex, best.bits, best.threshold)
                config.codebook = best.codebook
                chosen = [
                    "width_index": best.widthIndex, "bits": best.bits, "threshold": Double(best.threshold),
                    "payload": best.codebook ? "codebook" : "scalar",
                    "table_bytes": best.bytes, "table_ap50": best.ap50,
                ]
            } else if method == "intermediate" {
                config.lateFusion = true  // no map fits: the boxes rung
                chosen = ["payload": "boxes"]
            }
        }
        config.othersLatencyMs = latencyMs
        config.motionCompensation = motionCompensation
        config.poseAlignment = poseAlignment
        config.merge = merge
        if let poseNoise {
            let parts = poseNoise.split(separator: ",").map { Float($0.trimmingCharacters(in: .whitespaces)) }
            guard parts.count == 2, let m = parts[0], let d = parts[1], m >= 0, d >= 0, m.isFinite, d.isFinite else {
                throw ValidationError("--pose-noise takes two non-negative numbers, metres and degrees: 0.2,0.2")
            }
            config.poseNoise = (m, d)
        }
        guard let f = CooperativeDetector.Fusion(rawValue: fusion) else {
            throw ValidationError("--fusion must be attention or max")
        }
        config.fusion = f
        var sessions: [CooperativeSession] = []
        for (i, r) in recording.enumerated() {
            config.recording = r
            let session = CooperativeSession(config)
            let label = recording.count > 1 ? "eval \(i + 1)/\(recording.count)" : "eval"
            var bar = ProgressBar(label, total: 1)
            try await session.run(logger: logger) { done, total in
                if bar.total != total { bar = ProgressBar(label, total: total) }
                bar.update(done)
            }
            sessions.append(session)
        }
        var doc = evalReport(sessions)
        doc["method"] = method == "intermediate" && config.lateFusion ? "late" : method
        doc["merge"] = sessions[0].merge.rawValue
        if let chosen { doc["budget"] = ["bytes": budgetBytes!, "chosen": chosen] }
        if method == "single" {
            // Nothing shared: the agents' own detections, scored in the same run.
            doc["ap"] = doc["alone_ap"]
            doc["bytes_per_agent_frame"] = 0
        } else {
            doc["ap"] = doc["fused_ap"]
        }
        if json {
            print(
                String(
                    decoding: try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys]),
                    as: UTF8.self))
        } else {
            print(evalTable(sessions).render())
            let ap = doc["ap"] as! [String: Double]
            let alone = doc["alone_ap"] as! [String: Double]
            print(
                "\(doc["method"]!) AP@0.3/0.5/0.7: \(fmt(ap["0.3"]!)) / \(fmt(ap["0.5"]!)) / \(fmt(ap["0.7"]!));  alone: \(fmt(alone["0.3"]!)) / \(fmt(alone["0.5"]!)) / \(fmt(alone["0.7"]!))"
            )
        }
    }
}

func apDict(_ ap: AveragePrecision) -> [String: Double] {
    let p = ap.percent
    return ["0.3": Double(p[0]), "0.5": Double(p[1]), "0.7": Double(p[2])].mapValues {
        $0.isNaN ? -1 : ($0 * 100).rounded() / 100
    }
}

/// The eval document of one or more sessions of one configuration: AP pooled over every
/// session's ego-frames, agents (by name) pooled across sessions.
func evalReport(_ sessions: [CooperativeSession]) -> [String: Any] {
    let s = sessions[0]
    var fused = AveragePrecision()
    var alone = AveragePrecision()
    var bySeen = [AveragePrecision](repeating: AveragePrecision(), count: 2)
    var byRange = [AveragePrecision](repeating: AveragePrecision(), count: CooperativeSession.rangeBins.count)
    var agents: [[String: Any]] = []
    for (name, r) in pooledReports(sessions) {
        fused.merge(r.fusedAP)
        alone.merge(r.singleAP)
        for k in bySeen.indices { bySeen[k].merge(r.fusedBySeen[k]) }
        for k in byRange.indices { byRange[k].merge(r.fusedByRange[k]) }
        agents.append([
            "agent": name, "frames": r.frames, "results": r.results,
            "bytes_per_frame": r.frames > 0 ? r.bytes / r.frames : 0,
            "fused_ap": apDict(r.fusedAP), "alone_ap": apDict(r.singleAP),
            "latency_ms": [
                "edge_p50": percentile(r.edgeMs, 0.5), "edge_p99": percentile(r.edgeMs, 0.99),
                "wire_p50": percentile(r.wireMs, 0.5), "wire_p99": percentile(r.wireMs, 0.99),
                "round_trip_p50": percentile(r.roundTripMs, 0.5), "round_trip_p99": percentile(r.roundTripMs, 0.99),
            ],
        ])
    }
    return [
        "recording": sessions.count == 1 ? s.config.recording : sessions.map(\.config.recording) as Any,
        "model": s.config.model, "payload": s.config.lateFusion ? "boxes" : "map",
        "bytes_per_agent_frame": {
            let all = pooledReports(sessions).map(\.1)
            let frames = all.map(\.frames).reduce(0, +)
            return frames > 0 ? Double(all.map(\.bytes).reduce(0, +)) / Double(frames) : 0
        }(),
        "bits": s.config.bits, "message_payload": s.config.codebook ? "codebook" : "scalar",
        "width_index": s.config.widthIndex ?? -1, "threshold": s.config.threshold, "fusion": s.config.fusion.rawValue,
        "fused_ap": apDict(fused), "alone_ap": apDict(alone), "agents": agents,
        "fused_ap_by_agents_seeing": ["1": apDict(bySeen[0]), "2+": apDict(bySeen[1])],
        "fused_ap_by_range_m": Dictionary(
            uniqueKeysWithValues: CooperativeSession.rangeBins.enumerated().map { k, lo in
                let bins = CooperativeSession.rangeBins
                return (k + 1 < bins.count ? "\(Int(lo))-\(Int(bins[k + 1]))" : "\(Int(lo))+", apDict(byRange[k]))
            }),
        "conditions": [
            "pose_noise_m": Double(s.config.poseNoise?.metres ?? 0),
            "pose_noise_deg": Double(s.config.poseNoise?.degrees ?? 0),
            "others_latency_ms": s.config.othersLatencyMs,
            "motion_compensation": s.config.motionCompensation,
            "pose_alignment": s.config.poseAlignment,
        ],
        "server_fusion_ms": [
            "p50": percentile(sessions.flatMap(\.fuseMs), 0.5), "p99": percentile(sessions.flatMap(\.fuseMs), 0.99),
        ],
        "rejected_messages": sessions.map(\.rejected).reduce(0, +),
    ]
}

/// Each agent's reports of all sessions merged (AP pooled, samples concatenated), by name.
func pooledReports(_ sessions: [CooperativeSession]) -> [(String, CooperativeSession.AgentReport)] {
    var out: [String: CooperativeSession.AgentReport] = [:]
    for s in sessions {
        for (name, r) in s.reports {
            guard var m = out[name] else {
                out[name] = r
                continue
            }
            m.frames += r.frames
            m.results += r.results
            m.bytes += r.bytes
            m.fusedAP.merge(r.fusedAP)
            m.singleAP.merge(r.singleAP)
            for k in m.fusedBySeen.indices { m.fusedBySeen[k].merge(r.fusedBySeen[k]) }
            for k in m.fusedByRange.indices { m.fusedByRange[k].merge(r.fusedByRange[k]) }
            m.edgeMs += r.edgeMs
            m.wireMs += r.wireMs
            m.roundTripMs += r.roundTripMs
            out[name] = m
        }
    }
    return out.sorted { $0.key < $1.key }
}

func evalTable(_ sessions: [CooperativeSession]) -> TextTable {
    var t = TextTable([
        "agent", "frames", "results", "KB/frame", "AP@0.5 fused", "AP@0.5 alone", "RTT p50 ms", "RTT p99 ms",
    ])
    for (name, r) in pooledReports(sessions) {
        t.add([
            name, "\(r.frames)", "\(r.results)", fmt(Double(r.bytes) / Double(max(r.frames, 1)) / 1024, 2),
            fmt(Double(r.fusedAP.percent[1])), fmt(Double(r.singleAP.percent[1])),
            fmt(percentile(r.roundTripMs, 0.5), 2), fmt(percentile(r.roundTripMs, 0.99), 2),
        ])
    }
    return t
}

/// `--merge nms|weighted`.
extension BoxMerge: ExpressibleByArgument {}
extension MessagePayload: ExpressibleByArgument {}
