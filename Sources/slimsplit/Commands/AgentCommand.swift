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
import SlimCore
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
        let cfg = try AgentConfig.load(file: config)
        var o = AgentServices.Overrides()
        o.server = server
        o.frames = frames
        o.metricsPort = metricsPort
        o.reportPath = report
        let agent = try AgentServices(config: cfg, overrides: o, logger: logger)
        let group = agent.group(logger: logger)
        let signals = onShutdownSignal { Task { await group.triggerGracefulShutdown() } }
        let start = SystemClock.monotonicNs()
        try await group.run()
        _ = signals
        let links = agent.links
        let frameReport = agent.report
        let velodyne = agent.velodyne
        print(agentTable([links.home] + links.mirrors, seconds: Double(SystemClock.monotonicNs() - start) / 1e9).render())
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
        if links.home.ledger.counts.acked == 0 { throw ExitCode(1) }
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
