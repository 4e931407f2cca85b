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
                throw ValidationError(
                    "--report needs source.recording in \(config) (a live source has no ground truth)")
            }
            frameReport = try FrameReport(path: report, deadlineSeconds: src.deadline, startNs: Clock.monotonicNs())
        }
        let fr = frameReport
        let frameBytes = max(1 << 20, maxFrameBytes(cfg.synthetic, agentID: cfg.agentID))
        let onResult: FeatureAgent.ResultHandler = { r in fr?.result(r, atNs: Clock.monotonicNs()) }
        let agent = try FeatureAgent(
            identity: identity, server: server ?? cfg.server, curve: curve, options: cfg.socket,
            maxFrameBytes: frameBytes, logger: logger, onResult: onResult)
        // Sessions to other servers of a fleet (Handover): same identity, numbering and ledger;
        // the server key from the Handover, else the configured one (a fleet sharing one key pair).
        let sequence = agent.sequence
        let ledger = agent.ledger
        let socket = cfg.socket
        let id = identity
        let homeCurve = curve
        let links = Roaming(home: agent, logger: logger) { endpoint, key in
            let c = homeCurve.map {
                CurveClient(keyPair: $0.keyPair, serverKey: key.map { CurveKey(bytes: $0) } ?? $0.serverKey)
            }
            return try FeatureAgent(
                identity: id, server: endpoint, curve: c, options: socket, maxFrameBytes: frameBytes, logger: logger,
                onResult: onResult, sequence: sequence, ledger: ledger)
        }
        let stop = Locked(false)
        let stages = AgentStageTimes()
        var metrics: HTTPService?
        if let port = metricsPort ?? (cfg.metricsPort == 0 ? nil : cfg.metricsPort) {
            let e = edge
            let text: @Sendable () -> String = {
                agentPrometheusText(links.home, stages: stages, widthIndex: e?.widthIndex, bits: e?.bits)
            }
            metrics = try HTTPService(
                host: cfg.metricsHost, port: port, routes: ["/metrics": .prometheus(text)],
                dropsMetric: "slimsplit_metrics_clients_dropped_total", logger: logger)
            logger.info("metrics", metadata: ["url": "http://\(cfg.metricsHost):\(metrics!.port)/metrics"])
        }
        let signals = onShutdownSignal { stop.withLock { $0 = true } }
        let consumer = Task { await agent.run() }
        logger.info("streaming", metadata: ["agent": "\(cfg.agentID)", "server": "\(agent.endpoint.endpoint)"])
        let start = Clock.monotonicNs()
        var velodyne: VelodyneInput?
        if let edge, let src = cfg.source {
            let loop = try EdgeAgent(links: links, edge: edge, source: src, stages: stages, logger: logger)
            if let live = src.velodyne {
                velodyne = try await loop.live(live, frames: frames, stop: stop)
            } else {
                try await loop.replay(frames: frames, stop: stop, report: frameReport)
            }
        } else {
            await runSynthetic(agent: agent, source: cfg.synthetic, seed: 1, stop: stop)
        }
        // Give the last frames time to be acknowledged (by whichever server they went to).
        let deadline = Clock.monotonicNs() + 2_000_000_000
        while ledger.unacked > 0, Clock.monotonicNs() < deadline { await sleepSeconds(0.02) }
        if let frameReport {
            // Results of the last frames may still be on their way.
            let until = Clock.monotonicNs() + frameReport.deadlineNs + 500_000_000
            while Clock.monotonicNs() < until { await sleepSeconds(0.05) }
        }
        await links.closeAll()
        await consumer.value
        metrics?.close()
        _ = signals
        print(agentTable([links.home] + links.mirrors, seconds: Double(Clock.monotonicNs() - start) / 1e9).render())
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
            print(
                "velodyne: \(v["datagrams"] ?? 0) packets, \(v["sweeps"] ?? 0) sweeps, refused or out of order: \(v["counters"] ?? [:])"
            )
        }
        if let summary { try writeSummary(links, report: frameReport, velodyne: velodyne, to: summary) }
        if ledger.counts.acked == 0 { throw ExitCode(1) }
    }

    /// The `--summary` JSON: what a script checking a session needs from each agent.
    private func writeSummary(_ links: Roaming, report: FrameReport?, velodyne: VelodyneInput?, to path: String) throws
    {
        let all = links.linkStats.map(\.stats)
        let ledger = links.home.ledger.counts
        var rtt: [UInt64] = []
        for s in all { rtt += s.rttNs }
        var merged = AgentLinkStats()
        merged.rttNs = rtt
        var out: [String: Any] = [
            "agent": links.home.identity.agentID, "kernels": "\(KernelPath.default)",
            // Frames: distinct sequence numbers handed to a socket, and those some server acknowledged.
            "frames": ledger.sent, "acked": ledger.acked, "lost": links.home.ledger.unacked,
            "results": all.reduce(0) { $0 + $1.results },
            "dropped": all.reduce(0) { $0 + $1.framesReplaced + $1.framesNoBuffer + $1.framesRateCapped },
            "bytes": all.reduce(0) { $0 + $1.bytesSubmitted },
        ]
        if let p = merged.rttPercentileMs(50) { out["rtt_p50_ms"] = p }
        if let p = merged.rttPercentileMs(99) { out["rtt_p99_ms"] = p }
        if links.linkStats.count > 1 || !links.events.isEmpty {
            out["roaming"] = [
                "mirrored_frames": ledger.resent, "duplicate_acks": ledger.duplicateAcks,
                "refused_handovers": links.refused, "home": links.home.endpoint.endpoint,
                "events": links.events.map { e -> [String: Any] in
                    [
                        "kind": e.kind.rawValue, "from": e.from, "to": e.to, "at_ns": e.atNs, "at_wall_ns": e.atWallNs,
                        "last_old_result_ns": e.lastOldResultNs, "silent_since_ns": e.silentSinceNs,
                        "first_new_result_ns": e.firstNewResultNs, "first_new_ack_ns": e.firstNewAckNs,
                        "result_gap_ms": e.resultGapMs ?? NSNull(),
                        "taken_result_gap_ms": e.takenResultGapMs ?? NSNull(),
                    ]
                },
                "links": links.linkStats.map { l -> [String: Any] in
                    [
                        "endpoint": l.endpoint, "frames": l.stats.framesSubmitted, "acks": l.stats.acks,
                        "results": l.stats.results, "results_ignored": l.stats.resultsIgnored,
                        "first_ack_ns": l.stats.firstAckAtNs, "first_result_ns": l.stats.firstResultAtNs,
                        "last_result_ns": l.stats.lastResultAtNs,
                    ]
                },
            ]
        }
        if let r = report?.summary {
            out["report"] = [
                "frames": r.frames, "missed_deadline": r.missed, "ap30": Double(r.ap[0]), "ap50": Double(r.ap[1]),
                "ap70": Double(r.ap[2]),
            ]
        }
        if let velodyne { out["velodyne"] = velodyne.summary }
        let data = try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys])
        guard FileManager.default.createFile(atPath: path, contents: data + Data("\n".utf8)) else {
            throw ValidationError("--summary: cannot write \(path)")
        }
    }
}
