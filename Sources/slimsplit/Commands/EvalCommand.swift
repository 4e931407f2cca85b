import ArgumentParser
import Foundation
import Logging
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
            """)

    @Option(help: "Recording (MCAP) with ground truth.")
    var recording: String = "Tests/Fixtures/sample.mcap"

    @Option(help: "Model file.")
    var model: String = "Models/slimsplit-bev.safetensors"

    @Option(help: "Width index (default: the widest).")
    var widthIndex: Int?

    @Option(help: "Bits per transmitted value.")
    var bits: Int = 8

    @Option(help: "Sparsity threshold on the feature norm (0: send every cell).")
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
            Late fusion, live: every agent runs the whole detector (int8, full width) and sends its own boxes \
            (the Boxes message, the adaptation's lowest rung); the server merges them. The baseline a map must beat.
            """)
    var lateFusion = false

    @Flag(help: "Print JSON.")
    var json = false

    @OptionGroup var log: LogOptions

    func run() async throws {
        var lo = log
        if lo.logLevel == "info" { lo.logLevel = "warning" }
        let logger = try lo.bootstrap(label: "slimsplit.eval")
        var config = CooperativeSession.Config(recording: recording, model: model)
        config.widthIndex = widthIndex
        config.bits = bits
        config.threshold = threshold
        config.firstFrame = firstFrame
        config.floatEncoder = floatEncoder
        config.floatServer = floatServer
        config.lateFusion = lateFusion
        guard let f = CooperativeDetector.Fusion(rawValue: fusion) else {
            throw ValidationError("--fusion must be attention or max")
        }
        config.fusion = f
        let session = CooperativeSession(config)
        var bar = ProgressBar("eval", total: 1)
        try await session.run(logger: logger) { done, total in
            if bar.total != total { bar = ProgressBar("eval", total: total) }
            bar.update(done)
        }
        let doc = evalReport(session)
        if json {
            print(
                String(
                    decoding: try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys]),
                    as: UTF8.self))
        } else {
            print(evalTable(session).render())
            let ap = doc["fused_ap"] as! [String: Double]
            let alone = doc["alone_ap"] as! [String: Double]
            print(
                "fused AP@0.3/0.5/0.7: \(fmt(ap["0.3"]!)) / \(fmt(ap["0.5"]!)) / \(fmt(ap["0.7"]!));  alone: \(fmt(alone["0.3"]!)) / \(fmt(alone["0.5"]!)) / \(fmt(alone["0.7"]!))"
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

func evalReport(_ s: CooperativeSession) -> [String: Any] {
    var fused = AveragePrecision()
    var alone = AveragePrecision()
    var agents: [[String: Any]] = []
    for (name, r) in s.reports.sorted(by: { $0.key < $1.key }) {
        fused.merge(r.fusedAP)
        alone.merge(r.singleAP)
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
        "recording": s.config.recording, "model": s.config.model, "payload": s.config.lateFusion ? "boxes" : "map",
        "bits": s.config.bits,
        "width_index": s.config.widthIndex ?? -1, "threshold": s.config.threshold, "fusion": s.config.fusion.rawValue,
        "fused_ap": apDict(fused), "alone_ap": apDict(alone), "agents": agents,
        "server_fusion_ms": ["p50": percentile(s.fuseMs, 0.5), "p99": percentile(s.fuseMs, 0.99)],
        "rejected_messages": s.rejected,
    ]
}

func evalTable(_ s: CooperativeSession) -> TextTable {
    var t = TextTable([
        "agent", "frames", "results", "KB/frame", "AP@0.5 fused", "AP@0.5 alone", "RTT p50 ms", "RTT p99 ms",
    ])
    for (name, r) in s.reports.sorted(by: { $0.key < $1.key }) {
        t.add([
            name, "\(r.frames)", "\(r.results)", fmt(Double(r.bytes) / Double(max(r.frames, 1)) / 1024, 2),
            fmt(Double(r.fusedAP.percent[1])), fmt(Double(r.singleAP.percent[1])),
            fmt(percentile(r.roundTripMs, 0.5), 2), fmt(percentile(r.roundTripMs, 0.99), 2),
        ])
    }
    return t
}
