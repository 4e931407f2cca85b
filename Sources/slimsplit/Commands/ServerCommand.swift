import ArgumentParser
import Logging
import SlimConfig
import SlimServer
import SlimTransport
import SlimSensors
import SlimEngine
import Foundation

struct ServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Run the fusion server: accept agents, validate and acknowledge their feature frames.",
        discussion: "Stops gracefully on SIGINT or SIGTERM and prints a per-agent summary.")

    @Option(help: "Server config (YAML); every key is documented in Configs/server.yaml.")
    var config: String = "Configs/server.yaml"

    @Option(help: "Override the config's endpoint, e.g. tcp://0.0.0.0:5555.")
    var endpoint: String?

    @Option(help: "Seconds between per-agent status lines (0: none).")
    var statusInterval: Double = 10

    @Option(help: "Stop after this many seconds (0: run until a signal).")
    var duration: Double = 0

    @Option(help: "Prometheus endpoint port (overrides metrics.port; 0 picks a free port).")
    var metricsPort: Int?

    @OptionGroup var log: LogOptions

    func run() async throws {
        let logger = log.bootstrap(label: "slimsplit.server")
        let cfg = try ServerConfig.load(file: config)
        var curve: CurveServer?
        if let c = cfg.curve {
            curve = CurveServer(keyPair: try CurveKeyPair(secretKeyFile: c.secretKey),
                                allowList: try CurveAllowList(directory: c.allowedKeys))
            logger.info("Curve on", metadata: ["allowed_keys": "\(curve!.allowList.names.count)"])
        } else {
            logger.warning("Curve is off: traffic is neither encrypted nor authenticated")
        }
        let router = try RouterEndpoint(bind: endpoint ?? cfg.endpoint, curve: curve, options: cfg.socket, logger: logger)
        var options = ServerOptions()
        options.limits = cfg.limits
        options.rejectLogInterval = cfg.rejectLogInterval
        var fusion: FusionService?
        if let model = cfg.model {
            var fo = FusionService.Options()
            fo.windowNs = UInt64(cfg.windowMs * 1e6)
            fo.fusion = cfg.fusionMode == "max" ? .max : .attention
            fo.useLateFrames = cfg.useLateFrames
            fusion = try FusionService(modelFile: model, options: fo)
            logger.info("fusion on", metadata: ["model": "\(model)", "tick_hz": "\(cfg.tickHz)", "mode": "\(cfg.fusionMode)"])
        }
        let fusionRef = fusion
        let server = FeatureServer(endpoint: router, options: options, logger: logger) { agent, frame in
            fusionRef?.ingest(agent: agent, frame)
        }
        logger.info("listening", metadata: ["endpoint": "\(router.endpoint)"])
        var metrics: MetricsEndpoint?
        if cfg.metricsPort != 0 || metricsPort != nil {
            metrics = try MetricsEndpoint(host: cfg.metricsHost, port: metricsPort ?? cfg.metricsPort) { prometheusText(server: server, fusion: fusionRef) }
            logger.info("metrics", metadata: ["url": "http://\(cfg.metricsHost):\(metrics!.port)/metrics"])
        }
        let recorder: DetectionRecorder? = cfg.recordPath != nil || cfg.jsonLines != nil || cfg.publish != nil
            ? try DetectionRecorder(path: cfg.recordPath, jsonLines: cfg.jsonLines, publish: cfg.publish) : nil
        // Fusion tick: every agent with a new frame gets the fused detections in its own frame.
        let tickNs = UInt64(1e9 / cfg.tickHz)
        let ticker = Task {
            guard let fusion = fusionRef else { return }
            var next = Clock.monotonicNs() + tickNs
            while !Task.isCancelled {
                let now = Clock.monotonicNs()
                if next > now { try? await Task.sleep(nanoseconds: next - now) }
                next += tickNs
                for o in fusion.tick() {
                    server.send(fusion.result(o, fusionTimeNs: Clock.wallNs()), toAgent: o.agent)
                    recorder?.record(o)
                }
            }
        }
        let signals = onShutdownSignal { router.close() }
        let duration = self.duration, statusInterval = self.statusInterval
        let timer = Task {
            let start = Clock.monotonicNs()
            var lastStatus = start
            while !Task.isCancelled {
                await sleepSeconds(0.2)
                let now = Clock.monotonicNs()
                if duration > 0, Double(now - start) / 1e9 >= duration { router.close(); return }
                if statusInterval > 0, Double(now - lastStatus) / 1e9 >= statusInterval {
                    lastStatus = now
                    for (agent, s) in server.stats.sorted(by: { $0.key < $1.key }) {
                        logger.info("agent status", metadata: ["agent": "\(agent)", "frames": "\(s.frames)",
                                                               "bytes": "\(s.bytes)", "rejected": "\(s.rejectedTotal)"])
                    }
                }
            }
        }
        await server.run()
        timer.cancel()
        ticker.cancel()
        _ = await ticker.value
        metrics?.close()
        try recorder?.finish()  // flushes the recording's last chunk and its summary
        _ = signals
        print(serverTable(server).render())
    }
}

func serverTable(_ server: FeatureServer) -> TextTable {
    var t = TextTable(["agent", "key", "frames", "KB/frame", "ratio", "width", "bits", "cells sent", "rejected"])
    for (agent, s) in server.stats.sorted(by: { $0.key < $1.key }) {
        let kb = s.frames > 0 ? Double(s.bytes) / Double(s.frames) / 1024 : 0
        let ratio = s.bytes > 0 ? Double(s.rawBytes) / Double(s.bytes) : 0
        let rej = s.rejected.sorted { $0.key.rawValue < $1.key.rawValue }.map { "\($0.key.rawValue)=\($0.value)" }.joined(separator: " ")
        t.add([agent, s.keyName ?? "-", "\(s.frames)", fmt(kb, 2), fmt(ratio, 2) + "x",
               fmt(Double(s.widthPerMille) / 1000, 2), "\(s.bits)",
               s.cells > 0 ? "\(s.sentCells)/\(s.cells)" : "-", rej.isEmpty ? "0" : rej])
    }
    return t
}
