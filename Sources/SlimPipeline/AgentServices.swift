import Foundation
import Logging
import ServiceLifecycle
import SlimAgent
import SlimEngine
import SlimLive
import SlimServer
import SlimTransport
import SlimWire

/// `slimsplit agent` as services: the agent's sessions (``Roaming``), its metrics endpoint and
/// its frame source (a recording through the edge encoder, a live Velodyne, or synthetic
/// features), built from a config and ordered for a `ServiceGroup`. The command line parses
/// options, builds this, runs ``group(logger:)`` and prints the outcome.
///
/// Start order: metrics, links, source. The source ending (a recording played out, `--frames`
/// sent) shuts the group down; so does SIGTERM. The source stops first, waits up to 2 s for the
/// last frames' Acks (and, with a report, for their Results), then the links close, then metrics.
public final class AgentServices: ServiceSet, Sendable {
    public let links: Roaming
    public let edge: EdgeEncoder?
    public let report: FrameReport?
    public let metrics: HTTPService?
    public let stages = AgentStageTimes()
    private let source: SourceService
    public var services: [ServiceGroupConfiguration.ServiceConfiguration] {
        var list: [ServiceGroupConfiguration.ServiceConfiguration] = []
        if let metrics { list.append(.init(service: ClosingService("metrics") { metrics.close() })) }
        list.append(.init(service: LinksService(links: links)))
        list.append(.init(service: source, successTerminationBehavior: .gracefullyShutdownGroup))
        return list
    }
    /// What the live source read (nil for a recording or synthetic features).
    public var velodyne: VelodyneInput? { source.velodyne.value }

    public struct Overrides: Sendable {
        public var server: String?
        /// Stop after this many frames (nil: the recording's length, or synthetic.frames).
        public var frames: Int?
        public var metricsPort: Int?
        /// Write one JSON line per replayed frame here (needs source.recording).
        public var reportPath: String?
        public init() {}
    }

    public init(config cfg: AgentConfig, overrides: Overrides = Overrides(), logger: Logger) throws {
        var curve: CurveClient?
        if let c = cfg.curve {
            curve = CurveClient(
                keyPair: try CurveKeyPair(secretKeyFile: c.secretKey), serverKey: try CurveKey(file: c.serverKey))
        }
        var identity = AgentIdentity(agentID: cfg.agentID, modelID: "synthetic")
        if let src = cfg.source {
            let e = try EdgeEncoder(modelFile: src.model)
            do {
                try e.setOperatingPoint(
                    widthIndex: src.widthIndex ?? (e.model.architecture.widths.count - 1), bits: src.bits,
                    threshold: Float(src.threshold), codebook: src.codebook)
            } catch {
                throw PipelineError("source (width_index, bits, threshold, payload): \(error)")
            }
            identity = AgentIdentity(
                agentID: cfg.agentID, modelID: e.modelID,
                widths: e.model.architecture.widths.map { UInt16(($0 * 1000).rounded()) }, bitsMask: e.bitsMask)
            edge = e
        } else {
            edge = nil
        }
        if let path = overrides.reportPath {
            guard let src = cfg.source, src.velodyne == nil else {
                throw PipelineError("--report needs source.recording (a live source has no ground truth)")
            }
            report = try FrameReport(path: path, deadlineSeconds: src.deadline, startNs: SystemClock.monotonicNs())
        } else {
            report = nil
        }
        let fr = report
        var synthetic = cfg.synthetic
        if let n = overrides.frames { synthetic.frames = n }
        let frameBytes = max(1 << 20, maxFrameBytes(synthetic, agentID: cfg.agentID))
        let onResult: FeatureAgent.ResultHandler = { r in fr?.result(r, atNs: SystemClock.monotonicNs()) }
        let home = try FeatureAgent(
            identity: identity, server: overrides.server ?? cfg.server, curve: curve, options: cfg.socket,
            maxFrameBytes: frameBytes, logger: logger, onResult: onResult)
        // Sessions to other servers of a fleet (Handover): same identity, numbering and ledger;
        // the server key from the Handover, else the configured one (a fleet sharing one key pair).
        let sequence = home.sequence
        let ledger = home.ledger
        let socket = cfg.socket
        let id = identity
        let homeCurve = curve
        links = Roaming(home: home, logger: logger) { endpoint, key in
            let c = homeCurve.map {
                CurveClient(keyPair: $0.keyPair, serverKey: key.map { CurveKey(bytes: $0) } ?? $0.serverKey)
            }
            return try FeatureAgent(
                identity: id, server: endpoint, curve: c, options: socket, maxFrameBytes: frameBytes, logger: logger,
                onResult: onResult, sequence: sequence, ledger: ledger)
        }
        if let port = overrides.metricsPort ?? (cfg.metricsPort == 0 ? nil : cfg.metricsPort) {
            let e = edge
            let links = self.links
            let stages = self.stages
            let text: @Sendable () -> String = {
                agentPrometheusText(links.home, stages: stages, widthIndex: e?.widthIndex, bits: e?.bits)
                    + roamingPrometheusText(links)
            }
            let m = try HTTPService(
                host: cfg.metricsHost, port: port, routes: ["/metrics": .prometheus(text)],
                dropsMetric: "slimsplit_metrics_clients_dropped_total", logger: logger)
            logger.info("metrics", metadata: ["url": "http://\(cfg.metricsHost):\(m.port)/metrics"])
            metrics = m
        } else {
            metrics = nil
        }
        var loop: EdgeAgent?
        if let edge, let src = cfg.source {
            loop = try EdgeAgent(links: links, edge: edge, source: src, stages: stages, logger: logger)
        }
        source = SourceService(
            // The source service is the loop's one user from here on.
            loop: loop.map(UncheckedSendable.init), links: links, synthetic: synthetic, frames: overrides.frames,
            report: report,
            logger: logger)
        logger.info("streaming", metadata: ["agent": "\(cfg.agentID)", "server": "\(home.endpoint.endpoint)"])
    }
}

/// The agent's sessions: the home link's receive task until the group stops, then every link closes.
struct LinksService: Service {
    let links: Roaming
    func run() async throws {
        let consumer = Task { await links.run() }
        try? await gracefulShutdown()
        await links.closeAll()
        await consumer.value
    }
}

/// The frame source: a recording replayed (or a live Velodyne) through the edge agent, or
/// synthetic features. At its end, or at the graceful shutdown, the last frames get up to 2 s for
/// their Acks (from whichever server they went to) and, with a report, their Results.
final class SourceService: Service, Sendable {
    let loop: UncheckedSendable<EdgeAgent>?
    let links: Roaming
    let synthetic: AgentConfig.SyntheticSource
    let frames: Int?
    let report: FrameReport?
    let logger: Logger
    let velodyne = Locked<VelodyneInput?>(nil)

    init(
        loop: UncheckedSendable<EdgeAgent>?, links: Roaming, synthetic: AgentConfig.SyntheticSource, frames: Int?,
        report: FrameReport?, logger: Logger
    ) {
        self.loop = loop
        self.links = links
        self.synthetic = synthetic
        self.frames = frames
        self.report = report
        self.logger = logger
    }

    func run() async throws {
        let stop = Locked(false)
        try await withGracefulShutdownHandler {
            if let loop = loop?.value {
                if let live = loop.source.velodyne {
                    let v = try await loop.live(live, frames: frames, stop: stop)
                    velodyne.withLock { $0 = v }
                } else {
                    try await loop.replay(frames: frames, stop: stop, report: report)
                }
            } else {
                await runSynthetic(agent: links.home, source: synthetic, seed: 1, stop: stop)
            }
        } onGracefulShutdown: {
            stop.withLock { $0 = true }
        }
        let ledger = links.home.ledger
        let deadline = SystemClock.monotonicNs() + 2_000_000_000
        while ledger.unacked > 0, SystemClock.monotonicNs() < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        if let report {
            // Results of the last frames may still be on their way.
            let until = SystemClock.monotonicNs() + report.deadlineNs + 500_000_000
            while SystemClock.monotonicNs() < until { try? await Task.sleep(for: .milliseconds(50)) }
        }
    }
}

/// Prometheus lines of an agent's moves between servers (a fleet): handovers, failovers, refused advice.
func roamingPrometheusText(_ links: Roaming) -> String {
    let id = links.home.identity.agentID
    let m = links.moves
    return """
        # HELP slimsplit_agent_moves_total Moves to another server: handover (make-before-break) or failover (home silent).
        # TYPE slimsplit_agent_moves_total counter
        slimsplit_agent_moves_total{agent="\(id)",kind="handover"} \(m[.handover] ?? 0)
        slimsplit_agent_moves_total{agent="\(id)",kind="failover"} \(m[.failover] ?? 0)
        # HELP slimsplit_agent_handovers_refused_total Handover messages ignored: not from the agent's home, or older.
        # TYPE slimsplit_agent_handovers_refused_total counter
        slimsplit_agent_handovers_refused_total{agent="\(id)"} \(links.refused)
        # HELP slimsplit_agent_frames_unacked Frames handed to a socket that no server has acknowledged yet.
        # TYPE slimsplit_agent_frames_unacked gauge
        slimsplit_agent_frames_unacked{agent="\(id)"} \(links.home.ledger.unacked)

        """
}
