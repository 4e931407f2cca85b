import ArgumentParser
import Foundation
import Logging
import SlimAgent
import SlimConfig
import SlimEngine
import SlimLive
import SlimPipeline
import SlimSensors
import SlimServer
import SlimTransport
import SlimWire

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run an edge agent: connect to the server and stream feature frames.",
        discussion: """
            With `source.recording` in the config, the agent replays its LiDAR from the recording at the recorded rate,
            featurizes it, runs the model's int8 encoder, quantizes and sends the features, and the server answers with
            detections. Without it, the agent streams synthetic feature maps (section `synthetic`). Stops on SIGINT/SIGTERM.
            """)

    @Option(help: "Agent config (YAML); every key is documented in docs/configuration.md.")
    var config: String = "Configs/agent.yaml"

    @Option(help: "Override the config's server endpoint.")
    var server: String?

    @Option(help: "Override synthetic.frames (0: until a signal).")
    var frames: Int?

    @Option(help: "Prometheus endpoint port for this agent (overrides metrics.port).")
    var metricsPort: Int?

    @Option(
        help: ArgumentHelp(
            "Write one JSON line per replayed frame to this file: configuration, bytes, goodput, latency, deadline miss, and the frame scored against the recording's ground truth.",
            valueName: "file"))
    var report: String?

    @Option(
        help: ArgumentHelp(
            "At exit, write a JSON summary to this file: frames, acks, results, RTT percentiles, and with --report the AP of the Results against the recording's ground truth.",
            valueName: "file"))
    var summary: String?

    @Flag(
        help:
            "Check the config, keys, model, recording and that the server answers a Hello; print what is wrong, exit 1 if anything is."
    )
    var check = false

    @OptionGroup var log: LogOptions

    func run() async throws {
        if check {
            var quiet = Logger(label: "slimsplit.agent.check")
            quiet.logLevel = .critical
            _ = try log.bootstrap(label: "slimsplit.agent")
            guard await AgentCheck.run(config: config, server: server, logger: quiet) else { throw ExitCode(1) }
            return
        }
        let logger = try log.bootstrap(label: "slimsplit.agent", catchSignals: true)
        var cfg = try AgentConfig.load(file: config)
        if let frames { cfg.synthetic.frames = frames }
        var curve: CurveClient?
        if let c = cfg.curve {
            curve = CurveClient(
                keyPair: try CurveKeyPair(secretKeyFile: c.secretKey), serverKey: try CurveKey(file: c.serverKey))
        }
        var edge: EdgeEncoder?
        var identity = AgentIdentity(agentID: cfg.agentID, modelID: "synthetic")
        if let src = cfg.source {
            let e = try EdgeEncoder(modelFile: src.model)
            e.widthIndex = src.widthIndex ?? (e.model.architecture.widths.count - 1)
            e.bits = src.bits
            e.threshold = Float(src.threshold)
            identity = AgentIdentity(
                agentID: cfg.agentID, modelID: e.modelID,
                widths: e.model.architecture.widths.map { UInt16(($0 * 1000).rounded()) }, bitsMask: e.bitsMask)
            edge = e
        }
        var frameReport: FrameReport?
        if let report {
            guard let src = cfg.source, src.velodyne == nil else {
                throw ValidationError("--report needs source.recording in \(config) (a live source has no ground truth)")
            }
            frameReport = try FrameReport(path: report, deadlineSeconds: src.deadline, startNs: Clock.monotonicNs())
        }
        let fr = frameReport
        let agent = try FeatureAgent(
            identity: identity, server: server ?? cfg.server,
            curve: curve, options: cfg.socket,
            maxFrameBytes: max(1 << 20, maxFrameBytes(cfg.synthetic, agentID: cfg.agentID)), logger: logger,
            onResult: { r in fr?.result(r, atNs: Clock.monotonicNs()) })
        let dealer = agent.endpoint
        let stop = Locked(false)
        let stages = AgentStageTimes()
        var metrics: HTTPService?
        if let port = metricsPort ?? (cfg.metricsPort == 0 ? nil : cfg.metricsPort) {
            let e = edge
            let text: @Sendable () -> String = {
                agentPrometheusText(agent, stages: stages, widthIndex: e?.widthIndex, bits: e?.bits)
            }
            metrics = try HTTPService(
                host: cfg.metricsHost, port: port, routes: ["/metrics": .prometheus(text)],
                dropsMetric: "slimsplit_metrics_clients_dropped_total", logger: logger)
            logger.info("metrics", metadata: ["url": "http://\(cfg.metricsHost):\(metrics!.port)/metrics"])
        }
        let signals = onShutdownSignal { stop.withLock { $0 = true } }
        let consumer = Task { await agent.run() }
        logger.info("streaming", metadata: ["agent": "\(cfg.agentID)", "server": "\(dealer.endpoint)"])
        let start = Clock.monotonicNs()
        var velodyne: VelodyneInput?
        if let edge, let src = cfg.source, let live = src.velodyne {
            velodyne = try await runVelodyne(
                agent: agent, edge: edge, source: src, live: live, frames: frames, stop: stop, stages: stages,
                logger: logger)
        } else if let edge, let src = cfg.source {
            try await runRecording(
                agent: agent, edge: edge, source: src, frames: frames, stop: stop, stages: stages,
                report: frameReport, logger: logger)
        } else {
            await runSynthetic(agent: agent, source: cfg.synthetic, seed: 1, stop: stop)
        }
        // Give the last frames time to be acknowledged.
        let deadline = Clock.monotonicNs() + 2_000_000_000
        while agent.stats.acks < agent.stats.framesSubmitted - agent.stats.framesReplaced,
            Clock.monotonicNs() < deadline
        {
            await sleepSeconds(0.02)
        }
        if let frameReport {
            // Results of the last frames may still be on their way.
            let until = Clock.monotonicNs() + frameReport.deadlineNs + 500_000_000
            while Clock.monotonicNs() < until { await sleepSeconds(0.05) }
        }
        dealer.close()
        await consumer.value
        metrics?.close()
        _ = signals
        print(agentTable([agent], seconds: Double(Clock.monotonicNs() - start) / 1e9).render())
        if let frameReport {
            frameReport.close()
            let s = frameReport.summary
            print(
                String(
                    format:
                        "report: %d frames, %d missed the %.0f ms deadline (%.1f %%), AP@0.3/0.5/0.7 %.1f / %.1f / %.1f -> %@",
                    s.frames, s.missed, Double(frameReport.deadlineNs) / 1e6,
                    100 * Double(s.missed) / Double(max(s.frames, 1)),
                    s.ap[0], s.ap[1], s.ap[2], report ?? ""))
        }
        if let velodyne {
            let v = velodyne.summary
            print("velodyne: \(v["datagrams"] ?? 0) packets, \(v["sweeps"] ?? 0) sweeps, refused or out of order: \(v["counters"] ?? [:])")
        }
        if let summary { try writeSummary(agent, report: frameReport, velodyne: velodyne, to: summary) }
        if agent.stats.acks == 0 { throw ExitCode(1) }
    }

    /// The `--summary` JSON: what a script checking a session needs from each agent.
    private func writeSummary(_ agent: FeatureAgent, report: FrameReport?, velodyne: VelodyneInput?, to path: String) throws {
        let s = agent.stats
        var out: [String: Any] = [
            "agent": agent.identity.agentID, "kernels": "\(KernelPath.default)", "frames": s.framesSubmitted,
            "acked": s.acks, "results": s.results, "dropped": s.framesReplaced + s.framesNoBuffer + s.framesRateCapped,
            "bytes": s.bytesSubmitted,
        ]
        if let p = s.rttPercentileMs(50) { out["rtt_p50_ms"] = p }
        if let p = s.rttPercentileMs(99) { out["rtt_p99_ms"] = p }
        if let r = report?.summary {
            out["report"] = ["frames": r.frames, "missed_deadline": r.missed, "ap30": Double(r.ap[0]), "ap50": Double(r.ap[1]), "ap70": Double(r.ap[2])]
        }
        if let velodyne { out["velodyne"] = velodyne.summary }
        let data = try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys])
        guard FileManager.default.createFile(atPath: path, contents: data + Data("\n".utf8)) else {
            throw ValidationError("--summary: cannot write \(path)")
        }
    }

    /// Replays one agent of a recording through the edge encoder at the recorded rate.
    private func runRecording(
        agent: FeatureAgent, edge: EdgeEncoder, source: AgentConfig.RecordingSource, frames: Int?,
        stop: Locked<Bool>, stages: AgentStageTimes, report: FrameReport?, logger: Logger
    ) async throws {
        let rec = try RecordingFrames(path: source.recording)
        let mine = rec.frames.filter { $0.agents[source.agent]?.points.isEmpty == false }
        guard !mine.isEmpty else {
            throw ValidationError("\(source.recording) has no LiDAR for agent \(source.agent) (agents: \(rec.agents))")
        }
        logger.info(
            "replaying",
            metadata: ["recording": "\(source.recording)", "agent": "\(source.agent)", "frames": "\(mine.count)"])
        var sent = 0
        let sender = try SweepSender(agent: agent, edge: edge, source: source, stages: stages, logger: logger)
        let truthHalf = edge.featurizer.grid.xMax
        // Loops continue the recorded rhythm: the first sweep again one frame period after the last.
        let span = mine.last!.timeNs - mine[0].timeNs
        let period = mine.count > 1 ? span / UInt64(mine.count - 1) : 100_000_000
        var start = Clock.monotonicNs()
        repeat {
            defer { start = max(start + span + period, Clock.monotonicNs()) }
            for (fi, f) in mine.enumerated() {
                if stop.value || (frames.map { sent >= $0 } ?? false) { return }
                let due = start + (f.timeNs - mine[0].timeNs)
                let now = Clock.monotonicNs()
                if due > now { try await Task.sleep(nanoseconds: due - now) }
                let af = f.agents[source.agent]!
                guard let truth = af.pose else { continue }
                guard let bytes = sender.send(af.points, pose: af.measuredPose ?? truth, sensorHeight: truth.position.z)
                else { continue }
                if let report {
                    let gt = f.groundTruth(for: source.agent, half: truthHalf)
                    report.sent(
                        sequence: agent.lastSequence,
                        .init(
                            frame: fi, dueNs: due, wallNs: Clock.wallNs(), widthIndex: edge.widthIndex, bits: edge.bits,
                            threshold: edge.threshold,
                            bytes: bytes, goodputBytesPerSecond: agent.goodput.bytesPerSecond,
                            rttNs: agent.goodput.lastRTTNs,
                            truth: CooperativeSession.boxes(gt.boxes), own: gt.own))
                    report.expire(atNs: Clock.monotonicNs())
                }
                sent += 1
            }
        } while source.loop && !stop.value
    }

    /// Streams a live Velodyne sensor (or a capture of one): packets are read and assembled into
    /// sweeps on a thread of their own; each sweep goes through the edge encoder as it completes
    /// (the newest waits if the encoder is busy; older ones are dropped and counted).
    private func runVelodyne(
        agent: FeatureAgent, edge: EdgeEncoder, source: AgentConfig.RecordingSource, live: AgentConfig.VelodyneSource,
        frames: Int?, stop: Locked<Bool>, stages: AgentStageTimes, logger: Logger
    ) async throws -> VelodyneInput {
        let input = try VelodyneInput(source: live, logger: logger)
        let sender = try SweepSender(agent: agent, edge: edge, source: source, stages: stages, logger: logger)
        let pose = Pose3(x: live.poseX, y: live.poseY, z: live.mountZ, yaw: live.poseYaw)
        let c = Float(cos(live.mountYaw)), s = Float(sin(live.mountYaw))
        let mx = Float(live.mountX), my = Float(live.mountY)
        var points: [SIMD4<Float>] = []
        var sent = 0
        for await sweep in input.sweeps(stop: stop) {
            // Sensor frame → the agent's frame (mounting offset and heading; z stays above the sensor).
            points.removeAll(keepingCapacity: true)
            for p in sweep { points.append(SIMD4(c * p.x - s * p.y + mx, s * p.x + c * p.y + my, p.z, p.w)) }
            if sender.send(points, pose: pose, sensorHeight: live.mountZ) != nil { sent += 1 }
            if frames.map({ sent >= $0 }) ?? false { break }
        }
        input.close()
        return input
    }
}

/// The agent's per-sweep work, whatever the source: adaptation (or the server's caps) first,
/// then featurize, encode, quantize and submit one sweep.
final class SweepSender {
    let agent: FeatureAgent
    let edge: EdgeEncoder
    let source: AgentConfig.RecordingSource
    let stages: AgentStageTimes
    let logger: Logger
    private var controller: WidthController?
    private var appliedCapEpoch: UInt32?
    private let fixedWidth: Int

    init(
        agent: FeatureAgent, edge: EdgeEncoder, source: AgentConfig.RecordingSource, stages: AgentStageTimes,
        logger: Logger
    ) throws {
        self.agent = agent
        self.edge = edge
        self.source = source
        self.stages = stages
        self.logger = logger
        fixedWidth = edge.widthIndex
        // Adaptation: the configurations of the model's measured rate–accuracy table.
        if let deadline = source.adaptDeadline {
            guard let table = edge.rateAccuracy else {
                throw ValidationError(
                    "source.adapt needs the model's rate-accuracy table, which \(source.model) lacks "
                        + "(training/evaluate.py --write-table adds it)")
            }
            var c = WidthController(configurations: table)
            c.deadlineSeconds = deadline
            controller = c
        }
    }

    /// Sends one sweep (points in the agent's frame, z relative to the sensor); returns the bytes
    /// submitted, or nil when the rate cap or the link refused it.
    func send(_ points: [SIMD4<Float>], pose: Pose3, sensorHeight: Double) -> Int? {
        adapt()
        guard !agent.rateCapped() else { return nil }
        let shape = points.withUnsafeBufferPointer { edge.encode($0, sensorHeight: Float(sensorHeight)) }
        let h = FeatureFrameHeader(
            agentID: agent.identity.agentID, sequence: 0, captureTimeNs: Clock.wallNs(),
            position: pose.position, orientation: pose.orientation, modelID: edge.modelID,
            widthIndex: UInt8(edge.widthIndex), bits: UInt8(edge.bits), channels: shape.channels,
            height: shape.height, width: shape.width, quant: .model, masked: shape.masked, codec: .lz4)
        let bytes = edge.dense.withUnsafeBufferPointer { d in
            edge.mask.withUnsafeBytes { m in agent.submit(h, dense: d, mask: shape.masked ? m : nil) }
        }
        if let bytes { controller?.observe(bytes: bytes) }
        let st = edge.lastStageSeconds
        stages.add("featurize", st.featurize)
        stages.add("encode", st.encode)
        stages.add("quantize", st.quantize)
        stages.add("pack", agent.stats.lastPackSeconds)
        return bytes
    }

    private func adapt() {
        if var c = controller {
            let g = agent.goodput
            let caps = agent.control
            let cfg = c.update(
                goodputBytesPerSecond: g.bytesPerSecond, queueingSeconds: Double(g.queueingNs) / 1e9,
                rttSeconds: Double(g.lastRTTNs) / 1e9,
                maxWidthIndex: Int(caps?.maxWidthIndex ?? 255), maxBits: Int(caps?.maxBits ?? 8))
            controller = c
            if edge.widthIndex != cfg.widthIndex || edge.bits != cfg.bits || edge.threshold != cfg.threshold {
                logger.info(
                    "adapting",
                    metadata: [
                        "width_index": "\(cfg.widthIndex)", "bits": "\(cfg.bits)",
                        "threshold": "\(cfg.threshold)",
                        "goodput_kbit_s": "\(Int((g.bytesPerSecond ?? 0) * 8 / 1000))",
                    ])
                edge.widthIndex = cfg.widthIndex
                edge.bits = cfg.bits
                edge.threshold = cfg.threshold
            }
        } else if let caps = agent.control, caps.epoch != appliedCapEpoch {
            // Fixed configuration, within the server's caps (worked out once per Control).
            appliedCapEpoch = caps.epoch
            let wi = min(fixedWidth, Int(caps.maxWidthIndex))
            let bits =
                (1...min(source.bits, max(Int(caps.maxBits), 1))).last {
                    edge.quantization["\(wi).\($0)"] != nil
                } ?? source.bits
            if wi != edge.widthIndex || bits != edge.bits {
                logger.info("capped by the server", metadata: ["width_index": "\(wi)", "bits": "\(bits)"])
                edge.widthIndex = wi
                edge.bits = bits
            }
        }
    }
}
