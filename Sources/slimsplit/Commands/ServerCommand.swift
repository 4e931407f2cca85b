import ArgumentParser
import Foundation
import Logging
import SlimConfig
import SlimEngine
import SlimFleet
import SlimLive
import SlimPipeline
import SlimSensors
import SlimServer
import SlimTransport

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
        var curve: CurveServer?
        if let c = cfg.curve {
            curve = CurveServer(
                keyPair: try CurveKeyPair(secretKeyFile: c.secretKey),
                allowList: try CurveAllowList(directory: c.allowedKeys))
            logger.info("Curve on", metadata: ["allowed_keys": "\(curve!.allowList.names.count)"])
        } else {
            logger.warning("Curve is off: traffic is neither encrypted nor authenticated")
        }
        let router = try RouterEndpoint(
            bind: endpoint ?? cfg.endpoint, curve: curve, options: cfg.socket, logger: logger)
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
            logger.info(
                "fusion on",
                metadata: ["model": "\(model)", "max_passes_per_s": "\(cfg.tickHz)", "mode": "\(cfg.fusionMode)"])
        }
        let fusionRef = fusion
        // A fusion pass runs as soon as a frame is in (frames that arrive together share one), at
        // most tick_hz passes a second: a frame waits for no clock.
        let (arrivals, arrived) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        var check: FeatureServer.FrameCheck?
        if let f = fusionRef { check = { _, header in f.check(header) } }
        // A region server of a fleet: registered in etcd; tells agents when to move (Handover).
        var membership: FleetMembership?
        if let f = cfg.fleet {
            membership = try await FleetMembership.start(
                etcd: f.etcd, prefix: f.prefix, region: f.region, advertise: f.advertise,
                serverKey: curve?.keyPair.publicKey.bytes, name: f.name ?? ProcessInfo.processInfo.hostName,
                regionsFile: f.regionsFile, leaseTTLSeconds: f.leaseTTLSeconds, logger: logger)
        }
        let fleet = membership
        let serverRef = Locked<FeatureServer?>(nil)
        let server = FeatureServer(
            endpoint: router, options: options, logger: logger, check: check,
            onFrame: { agent, frame in
                if fusionRef?.ingest(agent: agent, frame) == true { arrived.yield() }
                if let fleet {
                    let p = frame.header.position
                    for h in fleet.observe(agent: agent, x: Double(p.x), y: Double(p.y)) {
                        serverRef.value?.send(h, toAgent: agent)
                    }
                }
            },
            onJoin: { agent in
                fusionRef?.joined(agent: agent)
                fleet?.joined(agent: agent)
            })
        serverRef.withLock { $0 = server }
        let registryTask = Task { await fleet?.registry.run() }
        logger.info("listening", metadata: ["endpoint": "\(router.endpoint)"])
        let recorder: DetectionRecorder? =
            cfg.recordPath != nil || cfg.jsonLines != nil || cfg.publish != nil
            ? try DetectionRecorder(
                path: cfg.recordPath, jsonLines: cfg.jsonLines, publish: cfg.publish,
                flushSeconds: cfg.recordFlushSeconds, logger: logger) : nil
        let serverMetrics: @Sendable () -> String = {
            prometheusText(server: server, fusion: fusionRef) + (recorder?.prometheusText ?? "")
                + (fleet?.prometheusText ?? "")
        }
        var metrics: HTTPService?
        if cfg.metricsPort != 0 || metricsPort != nil {
            metrics = try HTTPService(
                host: cfg.metricsHost, port: metricsPort ?? cfg.metricsPort,
                routes: ["/metrics": .prometheus(serverMetrics)],
                dropsMetric: "slimsplit_metrics_clients_dropped_total", logger: logger)
            logger.info("metrics", metadata: ["url": "http://\(cfg.metricsHost):\(metrics!.port)/metrics"])
        }
        var live: LiveView?
        if cfg.livePort != 0 || livePort != nil {
            live = try LiveView(
                host: cfg.liveHost, port: livePort ?? cfg.livePort, token: cfg.liveToken,
                deadlineMs: cfg.liveDeadlineMs,
                metrics: serverMetrics, logger: logger)
            logger.info(
                "live view",
                metadata: [
                    "dashboard": "http://\(cfg.liveHost):\(live!.http.port)/",
                    "foxglove": "ws://\(cfg.liveHost):\(live!.http.port)/",
                ])
        }
        let liveRef = live
        // Fusion: every agent with a new frame gets the fused detections in its own frame.
        let gapNs = UInt64(1e9 / cfg.tickHz)
        let ticker = Task {
            guard let fusion = fusionRef else { return }
            var last: UInt64 = 0
            for await _ in arrivals {
                let now = Clock.monotonicNs()
                if now < last &+ gapNs { try? await Task.sleep(nanoseconds: last &+ gapNs - now) }
                last = Clock.monotonicNs()
                let outs = fusion.tick()
                for o in outs {
                    server.send(fusion.result(o, fusionTimeNs: Clock.wallNs()), toAgent: o.agent)
                    recorder?.record(o)
                }
                liveRef?.fused(outs, nowWallNs: Clock.wallNs())
            }
        }
        // Uplink budget: every interval, share it by coverage and cap each agent (Control).
        var budgetTask: Task<Void, Never>?
        if cfg.uplinkBudgetBitsPerSecond > 0, let fusion = fusionRef {
            guard let table = fusion.rateAccuracy else {
                throw ValidationError(
                    "control.uplink_budget_kbit_s needs the model's rate-accuracy table, which \(cfg.model ?? "") lacks"
                )
            }
            var budget = UplinkBudget(bitsPerSecond: cfg.uplinkBudgetBitsPerSecond, table: table)
            budget.halfExtent = fusion.halfExtent
            budget.cell = fusion.cell
            let interval = cfg.controlInterval
            logger.info(
                "uplink budget",
                metadata: ["kbit_s": "\(cfg.uplinkBudgetBitsPerSecond / 1000)", "interval_s": "\(interval)"])
            budgetTask = Task {
                var lastFrames: [String: Int] = [:]
                var lastCaps: [String: UplinkBudget.Cap] = [:]
                while !Task.isCancelled {
                    await sleepSeconds(interval)
                    let stats = server.stats
                    let now = Clock.wallNs()
                    let agents = fusion.agentPoses.filter { now &- $0.captureNs < 5_000_000_000 || $0.captureNs > now }
                        .map { p in
                            let frames = stats[p.agent]?.frames ?? 0
                            let rate = Double(frames - (lastFrames[p.agent] ?? frames)) / interval
                            return UplinkBudget.Agent(
                                id: p.agent, position: p.position, yaw: p.yaw, rateHz: rate > 0 ? rate : 10)
                        }
                    for (a, s) in stats { lastFrames[a] = s.frames }
                    for (id, cap) in budget.caps(for: agents)
                    where lastCaps[id].map({ $0.maxWidthIndex != cap.maxWidthIndex || $0.maxBits != cap.maxBits })
                        ?? true
                    {
                        if server.sendControl(toAgent: id, maxWidthIndex: cap.maxWidthIndex, maxBits: cap.maxBits) {
                            lastCaps[id] = cap
                            logger.info(
                                "cap",
                                metadata: [
                                    "agent": "\(id)", "max_width_index": "\(cap.maxWidthIndex)",
                                    "max_bits": "\(cap.maxBits)",
                                    "share_kbit_s": "\(Int(cap.shareBitsPerSecond / 1000))",
                                    "coverage_share": "\(Int((cap.credit * 100).rounded())) %",
                                ])
                        }
                    }
                }
            }
        }
        // Graceful shutdown (signal or --duration): the pass under way ends, a last pass fuses
        // every frame already acknowledged, its Results and pending Acks go out (the socket
        // lingers up to 1 s for them), then the loop, the recording and the metrics close.
        let stopping = Locked(false)
        let shutdown: @Sendable (String) -> Void = { why in
            guard
                stopping.withLock({ s in
                    defer { s = true }
                    return !s
                })
            else { return }  // once
            logger.info("shutting down", metadata: ["reason": "\(why)"])
            Task {
                await fleet?.registry.stop()  // the lease goes now: the standby serves this region at once
                arrived.finish()
                _ = await ticker.value
                if let fusion = fusionRef {
                    for o in fusion.tick() {
                        server.send(fusion.result(o, fusionTimeNs: Clock.wallNs()), toAgent: o.agent)
                        recorder?.record(o)
                    }
                }
                router.drainAndClose(drainMs: 1000)
            }
        }
        let signals = onShutdownSignal { shutdown("signal") }
        logger.debug("signal handlers installed")
        let duration = self.duration
        let statusInterval = self.statusInterval
        let timer = Task {
            let start = Clock.monotonicNs()
            var lastStatus = start
            var lastLive = start
            while !Task.isCancelled {
                await sleepSeconds(0.2)
                recorder?.flushIfDue()
                if let liveRef, Clock.monotonicNs() - lastLive >= 500_000_000 {
                    lastLive = Clock.monotonicNs()
                    liveRef.tick(server: server, fusion: fusionRef, nowWallNs: Clock.wallNs())
                }
                let now = Clock.monotonicNs()
                if duration > 0, Double(now - start) / 1e9 >= duration {
                    shutdown("duration")
                    return
                }
                if statusInterval > 0, Double(now - lastStatus) / 1e9 >= statusInterval {
                    lastStatus = now
                    for (agent, s) in server.stats.sorted(by: { $0.key < $1.key }) {
                        logger.info(
                            "agent status",
                            metadata: [
                                "agent": "\(agent)", "frames": "\(s.frames)",
                                "bytes": "\(s.bytes)", "rejected": "\(s.rejectedTotal)",
                            ])
                    }
                }
            }
        }
        await server.run()
        timer.cancel()
        budgetTask?.cancel()
        await fleet?.registry.stop()
        _ = await registryTask.value
        arrived.finish()
        ticker.cancel()
        _ = await ticker.value
        metrics?.close()
        live?.close()
        recorder?.finish()  // flushes the recording's last chunk and its summary
        _ = signals
        print(serverTable(server).render())
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
