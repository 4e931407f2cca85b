import ArgumentParser
import Foundation
import Logging
import SlimAgent
import SlimEngine
import SlimPerception
import SlimPipeline
import SlimSensors

/// Capture-to-result latency and server capacity of the whole pipeline.
struct E2EBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "e2e",
        abstract: "Capture-to-result latency at 10 Hz over loopback and the server's capacity (agent-frames/s), JSON.",
        discussion: """
            Records a short scene with the requested number of agents (the sample's LiDAR), then runs the cooperative
            session at the recorded rate: every agent featurizes, encodes (int8), quantizes, packs and sends; the
            server fuses for every agent in its own frame and answers. Latency: from the start of featurizing to the
            Result's arrival. Capacity: agent-frames the server fuses per second of fusion work (a tick fuses every
            agent's frame), i.e. the rate at which its 10 Hz tick would overrun. Per core second: the same work in
            CPU time of the fusion threads (server_cpu_ms), which the agents' load on shared cores does not stretch.
            The agents encode each frame concurrently, as independent agents would, and share this machine's cores
            with each other and the server; no single-agent baseline is computed (`slimsplit eval` does).
            """)

    @Option(help: "Agents (vehicles plus a roadside unit).")
    var agents: Int = 4

    @Option(help: "Seconds of recording.")
    var seconds: Double = 3

    @Option(help: "Model file.")
    var model: String = "Models/slimsplit-deep.safetensors"

    @Option(help: "Bits per transmitted value (default: the model's recommended message).")
    var bits: Int?

    @Option(
        help:
            "Sparsity threshold (0: every cell): on the feature norm, or a deep-fusion model's heatmap probability (default: the model's recommended message).")
    var threshold: Float?

    @Option(
        help: ArgumentHelp(
            "scalar codes or a deep-fusion model's residual-codebook indices (default: the model's recommended message).",
            valueName: "scalar|codebook"))
    var payload: MessagePayload?

    @Option(help: "Threads the server fuses on (0: one per core, as `slimsplit server` does).")
    var fusionThreads: Int = 0

    @Option(
        help:
            "Kernel path (default: SLIMSPLIT_KERNELS, else the fastest this CPU runs): \(KernelPath.all.map(\.name).joined(separator: ", "))."
    )
    var kernels: String?

    @Option(
        help: ArgumentHelp(
            "How the server merges boxes (default: the model file's decode.merge).", valueName: "nms|weighted"))
    var merge: BoxMerge?

    @Flag(help: "Print JSON only.")
    var json = false

    func run() async throws {
        let path = try KernelPath.configure(kernels)
        var scene = try SceneConfig.load(file: "Configs/scenes/sample.yaml")
        scene.agents = max(1, agents - 1)
        scene.roadsideUnit = agents > 1
        scene.vehicles = max(scene.vehicles, scene.agents)
        scene.duration = seconds
        let file = NSTemporaryDirectory() + "slimsplit-e2e-\(getpid()).mcap"
        defer { try? FileManager.default.removeItem(atPath: file) }
        var sim = Simulator(config: scene, seed: 21)
        try RecordingWriter.record(&sim, to: file)
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        var config = try CooperativeSession.Config(
            recording: file, model: model, bits: bits, threshold: threshold, payload: payload)
        config.realTime = true
        config.fusionThreads = fusionThreads
        config.merge = merge
        config.singleAgentBaseline = false  // an evaluation's work, not the pipeline's
        config.concurrentAgents = true  // independent agents capture at once
        let session = CooperativeSession(config)
        try await session.run(logger: logger)
        var latency: [Double] = []
        for r in session.reports.values {
            for i in r.roundTripMs.indices where i < r.edgeMs.count {
                latency.append(r.edgeMs[i] + r.wireMs[i] + r.roundTripMs[i])
            }
        }
        let perTick = session.fuseMs
        let n = Double(sim.agentIDs.count)
        let capacity = perTick.isEmpty ? 0 : n / (percentile(perTick, 0.5) / 1000)
        // The same work in CPU time: what one core fuses per second when nothing else runs on it
        // (the agents here share the cores with the server, and stretch its passes' wall time).
        let cpuPerTick = session.fuseCPUMs
        let perCore = cpuPerTick.isEmpty ? 0 : n / (percentile(cpuPerTick, 0.5) / 1000)
        let doc: [String: Any] = [
            "benchmark": "e2e", "agents": sim.agentIDs.count, "rate_hz": scene.rate, "frames": sim.frameCount,
            "bits": config.bits, "threshold": Double(config.threshold), "model": model,
            "payload": config.codebook ? "codebook" : "scalar",
            "edge_ms": [
                "p50": percentile(session.reports.values.flatMap(\.edgeMs), 0.5),
                "p99": percentile(session.reports.values.flatMap(\.edgeMs), 0.99),
            ],
            "transport": "tcp://127.0.0.1, Curve on",
            "capture_to_result_ms": ["p50": percentile(latency, 0.5), "p99": percentile(latency, 0.99)],
            "server_tick_ms": ["p50": percentile(perTick, 0.5), "p99": percentile(perTick, 0.99)],
            "capacity_agent_frames_per_s": capacity.rounded(),
            "server_cpu_ms": ["p50": percentile(cpuPerTick, 0.5), "p99": percentile(cpuPerTick, 0.99)],
            "agent_frames_per_core_second": perCore.rounded(),
            "server_stage_ms": session.stageMs.mapValues { ["p50": $0.p50, "p99": $0.p99] },
            "bytes_per_frame": session.reports.values.map { $0.frames > 0 ? $0.bytes / $0.frames : 0 }.reduce(0, +)
                / max(session.reports.count, 1),
            "kernels": path.name, "fusion_threads": session.fusionThreads, "merge": session.merge.rawValue,
            "fusion_cpus": session.fusionCPUs, "cpu": cpuDescription(),
        ]
        print(
            String(
                decoding: try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys]),
                as: UTF8.self))
    }
}

/// `--merge nms|weighted`.
extension BoxMerge: ExpressibleByArgument {}
extension MessagePayload: ExpressibleByArgument {}
