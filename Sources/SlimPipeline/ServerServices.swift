import Foundation
import Logging
import ServiceLifecycle
import SlimEngine
import SlimFleet
import SlimLive
import SlimServer
import SlimTransport
import SlimWire

/// `slimsplit server` as services: everything a server config asks for, built and ordered for a
/// `ServiceGroup`. The command line only parses options, builds this and runs ``group``.
///
/// Services, in start order (a graceful shutdown stops them in reverse): the recording, the
/// metrics endpoint, the live view, the fusion server, the uplink budget, the housekeeping timer
/// (status lines, recording flushes, live-view ticks, `duration`), the fleet registry. So on
/// SIGTERM the lease is revoked first (the standby takes over the region at once), the fusion
/// server drains (last pass, Results and Acks out), and the recording is closed last, with every
/// Result in it.
public final class ServerServices: ServiceSet, Sendable {
    public let fusionServer: FusionServer
    public let router: RouterEndpoint
    public let recorder: DetectionRecorder?
    public let metrics: HTTPService?
    public let live: LiveView?
    public let fleet: FleetMembership?
    public let services: [ServiceGroupConfiguration.ServiceConfiguration]

    /// Command-line overrides of the config.
    public struct Overrides: Sendable {
        public var endpoint: String?
        public var metricsPort: Int?
        public var livePort: Int?
        /// Stop after this many seconds (nil: run until a signal).
        public var duration: Double?
        public var statusInterval: Double = 10
        public init() {}
    }

    public init(config cfg: ServerConfig, overrides: Overrides = Overrides(), logger: Logger) async throws {
        var curve: CurveServer?
        if let c = cfg.curve {
            curve = CurveServer(
                keyPair: try CurveKeyPair(secretKeyFile: c.secretKey),
                allowList: try CurveAllowList(directory: c.allowedKeys))
            logger.info("Curve on", metadata: ["allowed_keys": "\(curve!.allowList.names.count)"])
        } else {
            logger.warning("Curve is off: traffic is neither encrypted nor authenticated")
        }
        router = try RouterEndpoint(
            bind: overrides.endpoint ?? cfg.endpoint, curve: curve, options: cfg.socket, logger: logger)
        var options = ServerOptions()
        options.limits = cfg.limits
        options.rejectLogInterval = cfg.rejectLogInterval
        var fusionService: FusionService?
        if let model = cfg.model {
            var fo = FusionService.Options()
            fo.windowNs = UInt64(cfg.windowMs * 1e6)
            fo.fusion = cfg.fusionMode == "max" ? .max : .attention
            fo.useLateFrames = cfg.useLateFrames
            fo.threads = cfg.fusionThreads
            fo.motionCompensation = cfg.motionCompensation
            fo.poseAlignment = cfg.poseAlignment
            let service = try FusionService(modelFile: model, options: fo)
            fusionService = service
            logger.info(
                "fusion on",
                metadata: [
                    "model": "\(model)", "max_passes_per_s": "\(cfg.tickHz)", "mode": "\(cfg.fusionMode)",
                    "threads": "\(service.threads)", "motion_compensation": "\(cfg.motionCompensation)",
                    "pose_alignment": "\(cfg.poseAlignment)",
                ])
        }
        // A region server of a fleet: registered in etcd; tells agents when to move (Handover).
        if let f = cfg.fleet {
            fleet = try await FleetMembership.start(
                etcd: f.etcd, prefix: f.prefix, region: f.region, advertise: f.advertise,
                serverKey: curve?.keyPair.publicKey.bytes, name: f.name ?? ProcessInfo.processInfo.hostName,
                regionsFile: f.regionsFile, leaseTTLSeconds: f.leaseTTLSeconds, logger: logger)
        } else {
            fleet = nil
        }
        let fleet = self.fleet
        let fusion = fusionService
        var onFrame: FusionServer.FrameHook?
        var onJoin: (@Sendable (String) -> Void)?
        if let fleet {
            onFrame = { agent, p, s in
                for h in fleet.observe(agent: agent, x: Double(p.x), y: Double(p.y)) {
                    s.server.send(h, toAgent: agent)
                }
            }
            onJoin = { agent in fleet.joined(agent: agent) }
        }
        fusionServer = FusionServer(
            endpoint: router, options: options, fusion: fusion, trigger: .arrival(maxPassesPerSecond: cfg.tickHz),
            logger: logger, onFrame: onFrame, onJoin: onJoin)
        if !fusionServer.fusionCPUs.isEmpty {
            logger.info(
                "fusion threads pinned", metadata: ["cpus": "\(fusionServer.fusionCPUs.map(String.init).joined(separator: ","))"])
        }
        logger.info("listening", metadata: ["endpoint": "\(router.endpoint)"])
        recorder =
            cfg.recordPath != nil || cfg.jsonLines != nil || cfg.publish != nil
            ? try DetectionRecorder(
                path: cfg.recordPath, jsonLines: cfg.jsonLines, publish: cfg.publish,
                flushSeconds: cfg.recordFlushSeconds,
                logger: logger) : nil
        let server = fusionServer.server
        let recorder = self.recorder
        let serverMetrics: @Sendable () -> String = {
            prometheusText(server: server, fusion: fusion) + (recorder?.prometheusText ?? "")
                + (fleet?.prometheusText ?? "")
        }
        if cfg.metricsPort != 0 || overrides.metricsPort != nil {
            let m = try HTTPService(
                host: cfg.metricsHost, port: overrides.metricsPort ?? cfg.metricsPort,
                routes: ["/metrics": .prometheus(serverMetrics)],
                dropsMetric: "slimsplit_metrics_clients_dropped_total",
                logger: logger)
            logger.info("metrics", metadata: ["url": "http://\(cfg.metricsHost):\(m.port)/metrics"])
            metrics = m
        } else {
            metrics = nil
        }
        if cfg.livePort != 0 || overrides.livePort != nil {
            let l = try LiveView(
                host: cfg.liveHost, port: overrides.livePort ?? cfg.livePort, token: cfg.liveToken,
                deadlineMs: cfg.liveDeadlineMs, metrics: serverMetrics, logger: logger)
            logger.info(
                "live view",
                metadata: [
                    "dashboard": "http://\(cfg.liveHost):\(l.http.port)/",
                    "foxglove": "ws://\(cfg.liveHost):\(l.http.port)/",
                ])
            live = l
        } else {
            live = nil
        }
        if let fleet {
            // Leaving: the registry service (stopped first) has revoked the lease; once the standby
            // has seen that, every agent is told to move to it, and gets time to do so (its frames
            // are still taken and acknowledged meanwhile). A crash skips this: agents fail over.
            fusionServer.onShutdown { s in
                await fleet.registry.stop()
                try? await Task.sleep(for: .milliseconds(Int(fleet.registry.pollSeconds * 2000) + 50))
                let bye = fleet.farewells()
                for (agent, h) in bye { s.server.send(h, toAgent: agent) }
                logger.info("handing agents over", metadata: ["agents": "\(bye.count)"])
                if !bye.isEmpty { try? await Task.sleep(for: .milliseconds(600)) }
            }
        }
        let live = self.live
        fusionServer.observe { outs, _ in
            for o in outs { recorder?.record(o) }
            live?.fused(outs, nowWallNs: SystemClock.wallNs())
        }

        var list: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let recorder {
            list.append(.init(service: ClosingService("recorder") { recorder.finish() }))
        }
        if let metrics { list.append(.init(service: ClosingService("metrics") { metrics.close() })) }
        if let live { list.append(.init(service: ClosingService("live view") { live.close() })) }
        // The fusion server ending (its socket closed) ends the whole group.
        list.append(.init(service: fusionServer, successTerminationBehavior: .gracefullyShutdownGroup))
        if cfg.uplinkBudgetBitsPerSecond > 0, let fusion {
            guard let table = fusion.rateAccuracy else {
                throw PipelineError(
                    "control.uplink_budget_kbit_s needs the model's rate-accuracy table, which \(cfg.model ?? "") lacks"
                )
            }
            var budget = UplinkBudget(bitsPerSecond: cfg.uplinkBudgetBitsPerSecond, table: table)
            budget.halfExtent = fusion.halfExtent
            budget.cell = fusion.cell
            logger.info(
                "uplink budget",
                metadata: ["kbit_s": "\(cfg.uplinkBudgetBitsPerSecond / 1000)", "interval_s": "\(cfg.controlInterval)"])
            list.append(
                .init(
                    service: UplinkBudgetService(
                        budget: budget, server: server, fusion: fusion, interval: cfg.controlInterval, logger: logger)))
        }
        list.append(
            .init(
                service: Housekeeping(
                    server: server, fusion: fusion, recorder: recorder, live: live, duration: overrides.duration,
                    statusInterval: overrides.statusInterval, logger: logger),
                successTerminationBehavior: .gracefullyShutdownGroup))
        if let fleet { list.append(.init(service: RegistryService(registry: fleet.registry))) }
        services = list
    }
}

/// Every interval, shares the uplink budget by coverage and caps each agent (Control).
struct UplinkBudgetService: Service {
    let budget: UplinkBudget
    let server: FeatureServer
    let fusion: FusionService
    let interval: Double
    let logger: Logger

    func run() async throws {
        var lastFrames: [String: Int] = [:]
        var lastCaps: [String: UplinkBudget.Cap] = [:]
        while await napUnlessStopping(Int(interval * 1000)) {
            let stats = server.stats
            let now = SystemClock.wallNs()
            let agents = fusion.agentPoses.filter { now &- $0.captureNs < 5_000_000_000 || $0.captureNs > now }
                .map { p in
                    let frames = stats[p.agent]?.frames ?? 0
                    let rate = Double(frames - (lastFrames[p.agent] ?? frames)) / interval
                    return UplinkBudget.Agent(
                        id: p.agent, position: p.position, yaw: p.yaw, rateHz: rate > 0 ? rate : 10)
                }
            for (a, s) in stats { lastFrames[a] = s.frames }
            for (id, cap) in budget.caps(for: agents)
            where lastCaps[id].map({ $0.maxWidthIndex != cap.maxWidthIndex || $0.maxBits != cap.maxBits }) ?? true {
                if server.sendControl(toAgent: id, maxWidthIndex: cap.maxWidthIndex, maxBits: cap.maxBits) {
                    lastCaps[id] = cap
                    logger.info(
                        "cap",
                        metadata: [
                            "agent": "\(id)", "max_width_index": "\(cap.maxWidthIndex)", "max_bits": "\(cap.maxBits)",
                            "share_kbit_s": "\(Int(cap.shareBitsPerSecond / 1000))",
                            "coverage_share": "\(Int((cap.credit * 100).rounded())) %",
                        ])
                }
            }
        }
    }
}

/// The server's timer, five times a second: recording flushes, live-view ticks, per-agent status
/// lines, and the end of a `duration` (it then returns, which shuts the group down).
struct Housekeeping: Service {
    let server: FeatureServer
    let fusion: FusionService?
    let recorder: DetectionRecorder?
    let live: LiveView?
    let duration: Double?
    let statusInterval: Double
    let logger: Logger

    func run() async throws {
        let start = SystemClock.monotonicNs()
        var lastStatus = start
        var lastLive = start
        while await napUnlessStopping(200) {
            recorder?.flushIfDue()
            let now = SystemClock.monotonicNs()
            if let live, now - lastLive >= 500_000_000 {
                lastLive = now
                live.tick(server: server, fusion: fusion, nowWallNs: SystemClock.wallNs())
            }
            if let duration, duration > 0, Double(now - start) / 1e9 >= duration {
                logger.info("shutting down", metadata: ["reason": "duration"])
                return
            }
            if statusInterval > 0, Double(now - lastStatus) / 1e9 >= statusInterval {
                lastStatus = now
                for (agent, s) in server.stats.sorted(by: { $0.key < $1.key }) {
                    logger.info(
                        "agent status",
                        metadata: [
                            "agent": "\(agent)", "frames": "\(s.frames)", "bytes": "\(s.bytes)",
                            "rejected": "\(s.rejectedTotal)",
                        ])
                }
            }
        }
    }
}

/// Sleeps, waking early at a graceful shutdown or a cancellation; false when the service should stop.
func napUnlessStopping(_ ms: Int) async -> Bool {
    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .milliseconds(ms)) }
    return !(Task.isShuttingDownGracefully || Task.isCancelled)
}

/// The fleet registry's lease and view, until the graceful shutdown revokes the lease.
struct RegistryService: Service {
    let registry: FleetRegistry

    func run() async throws {
        await withGracefulShutdownHandler {
            await registry.run()
        } onGracefulShutdown: {
            Task { await registry.stop() }
        }
        await registry.stop()
    }
}

/// A process's services, in start order (the server's, the agent's).
public protocol ServiceSet {
    var services: [ServiceGroupConfiguration.ServiceConfiguration] { get }
}

extension ServiceSet {
    /// The group to run: shut down in reverse order, a graceful shutdown bounded by
    /// `maximumShutdownSeconds`.
    public func group(logger: Logger, maximumShutdownSeconds: Double = 10) -> ServiceGroup {
        var c = ServiceGroupConfiguration(services: services, logger: logger)
        c.maximumGracefulShutdownDuration = .milliseconds(Int(maximumShutdownSeconds * 1000))
        return ServiceGroup(configuration: c)
    }
}
