import ArgumentParser
import Foundation
import SlimConfig
import SlimPipeline
import SlimServer

struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Run the fusion server: accept agents, validate and acknowledge their feature frames.",
        discussion: "Stops gracefully on SIGINT or SIGTERM and prints a per-agent summary.")

    @Option(help: "Server config (YAML); every key is documented in docs/configuration.md.")
    var config: String = "Configs/server.yaml"

    @Option(help: "Override the config's endpoint, e.g. tcp://0.0.0.0:5555.")
    var endpoint: String?

    @Option(help: "Seconds between per-agent status lines (0: none).")
    var statusInterval: Double = 10

    @Option(help: "Stop after this many seconds (0: run until a signal).")
    var duration: Double = 0

    @Option(help: "Prometheus endpoint port (overrides metrics.port; 0 picks a free port).")
    var metricsPort: Int?

    @Option(help: "Live view port: dashboard and Foxglove WebSocket (overrides live.port; 0 picks a free port).")
    var livePort: Int?

    @OptionGroup var log: LogOptions

    func run() async throws {
        let logger = try log.bootstrap(label: "slimsplit.server", catchSignals: true)
        let cfg = try ServerConfig.load(file: config)
        var o = ServerServices.Overrides()
        o.endpoint = endpoint
        o.metricsPort = metricsPort
        o.livePort = livePort
        o.duration = duration > 0 ? duration : nil
        o.statusInterval = statusInterval
        let services = try await ServerServices(config: cfg, overrides: o, logger: logger)
        let group = services.group(logger: logger)
        // SIGINT/SIGTERM (caught from the start of the command): the group's graceful shutdown.
        let signals = onShutdownSignal {
            logger.info("shutting down", metadata: ["reason": "signal"])
            Task { await group.triggerGracefulShutdown() }
        }
        try await group.run()
        _ = signals
        print(serverTable(services.fusionServer.server).render())
    }
}

func serverTable(_ server: FeatureServer) -> TextTable {
    var t = TextTable(["agent", "key", "frames", "KB/frame", "ratio", "width", "bits", "cells sent", "rejected"])
    for (agent, s) in server.stats.sorted(by: { $0.key < $1.key }) {
        let kb = s.frames > 0 ? Double(s.bytes) / Double(s.frames) / 1024 : 0
        let ratio = s.bytes > 0 ? Double(s.rawBytes) / Double(s.bytes) : 0
        let rej = s.rejected.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue)=\($0.value)" }
            .joined(separator: " ")
        t.add([
            agent, s.keyName ?? "-", "\(s.frames)", fmt(kb, 2), fmt(ratio, 2) + "x",
            fmt(Double(s.widthPerMille) / 1000, 2), "\(s.bits)",
            s.cells > 0 ? "\(s.sentCells)/\(s.cells)" : "-", rej.isEmpty ? "0" : rej,
        ])
    }
    return t
}
