import Foundation
import Logging
import SlimCore
import SlimEngine
import SlimServer

/// The server's live view: fused detections and per-agent state, published to Foxglove
/// WebSocket clients and to the dashboard page (which is such a client), on one ``HTTPService``.
///
/// Channels (JSON encoding):
/// - `/fusion/detections`, `foxglove.SceneUpdate`: one entity per agent's fused view (id
///   `fused/<agent>`), its boxes as cubes in the world frame, replaced on every pass.
/// - `/agents/state`, `slimsplit.AgentStates`: every agent's pose, width, bits, KB per frame,
///   frames, capture-to-Result latency p50/p99 and deadline misses, twice a second.
/// - `/agents/poses`, `foxglove.SceneUpdate`: each agent as an arrow, its grid's outline and a
///   label with its width, bits and KB per frame (for Foxglove's 3D panel), twice a second.
///
/// `fused(_:server:)` is called by the fusion loop (never blocks: publishing drops for slow
/// clients); `tick(server:fusion:)` by the server's timer.
public final class LiveView: Sendable {
    public static let detections: UInt32 = 1
    public static let agentStates: UInt32 = 2
    public static let agentPoses: UInt32 = 3
    public let hub: FoxgloveHub
    public let http: HTTPService
    public let deadlineMs: Double
    private let latency = Locked<[String: Latencies]>([:])

    /// The last `capacity` capture-to-Result latencies of an agent, and its deadline misses.
    struct Latencies {
        static let capacity = 256
        var ms: [Double] = []
        var next = 0
        var missed = 0
        mutating func add(_ v: Double, deadline: Double) {
            if ms.count < Self.capacity { ms.append(v) } else { ms[next] = v }
            next = (next + 1) % Self.capacity
            if v > deadline { missed += 1 }
        }
        func percentile(_ p: Double) -> Double? {
            guard !ms.isEmpty else { return nil }
            let s = ms.sorted()
            return s[min(s.count - 1, Int((Double(s.count - 1) * p / 100).rounded()))]
        }
    }

    /// Serves the dashboard (`/`), the WebSocket (`/`, upgraded) and `/metrics` of the live view
    /// on `host:port`; with `token`, every request but `/metrics` needs it.
    public init(host: String, port: Int, token: String?, deadlineMs: Double = 100, metrics: @escaping @Sendable () -> String, logger: Logger) throws {
        let hub = FoxgloveHub(
            name: "slimsplit",
            channels: [
                .init(
                    id: Self.detections, topic: "/fusion/detections", schemaName: "foxglove.SceneUpdate",
                    schema: Schemas.sceneUpdate),
                .init(id: Self.agentStates, topic: "/agents/state", schemaName: "slimsplit.AgentStates", schema: Schemas.agentStates),
                .init(
                    id: Self.agentPoses, topic: "/agents/poses", schemaName: "foxglove.SceneUpdate",
                    schema: Schemas.sceneUpdate),
            ])
        self.hub = hub
        self.deadlineMs = deadlineMs
        let page = Array(Dashboard.html.utf8)
        http = try HTTPService(
            host: host, port: port,
            routes: [
                "/": .init(type: "text/html; charset=utf-8") { page },
                "/metrics": .prometheus { metrics() + hub.prometheusText },
            ], foxglove: hub, token: token, tokenExempt: ["/metrics"], logger: logger)
    }

    public func close() { http.close() }

    /// One fusion pass's outputs: their boxes on `/fusion/detections`, and each agent's
    /// capture-to-Result latency noted (`nowWallNs` is when the Results went out).
    public func fused(_ outputs: [FusionService.Output], nowWallNs: UInt64) {
        latency.withLock { l in
            // Only captures stamped by a wall clock (a replay's recorded clock gives no latency).
            for o in outputs where nowWallNs >= o.captureTimeNs && nowWallNs - o.captureTimeNs < 60_000_000_000 {
                l[o.agent, default: Latencies()].add(Double(nowWallNs - o.captureTimeNs) / 1e6, deadline: deadlineMs)
            }
        }
        guard hub.clientCount > 0 else { return }
        for o in outputs {
            hub.publish(channel: Self.detections, logTimeNs: o.captureTimeNs, payload: Array(sceneUpdate(o).utf8))
        }
    }

    /// Every agent's state on `/agents/state`.
    public func tick(server: FeatureServer, fusion: FusionService?, nowWallNs: UInt64) {
        guard hub.clientCount > 0 else { return }
        let stats = server.stats
        let poses = Dictionary((fusion?.agentPoses ?? []).map { ($0.agent, $0) }, uniquingKeysWith: { a, _ in a })
        let lat = latency.withLock { $0 }
        let range = Double(fusion?.halfExtent ?? 32)
        var agents: [[String: Any]] = []
        for (id, s) in stats.sorted(by: { $0.key < $1.key }) {
            var a: [String: Any] = [
                "id": id, "width": Double(s.widthPerMille) / 1000, "bits": s.bits, "frames": s.frames,
                "kb_per_frame": s.frames > 0 ? Double(s.bytes) / Double(s.frames) / 1024 : 0,
                "rejected": s.rejectedTotal, "range_m": range,
            ]
            if let p = poses[id] {
                a["x"] = Double(p.position.x)
                a["y"] = Double(p.position.y)
                a["yaw"] = Double(p.yaw)
            }
            if let l = lat[id] {
                a["latency_p50_ms"] = l.percentile(50) ?? 0
                a["latency_p99_ms"] = l.percentile(99) ?? 0
                a["deadline_misses"] = l.missed
            }
            agents.append(a)
        }
        let payload = json(["agents": agents, "deadline_ms": deadlineMs])
        hub.publish(channel: Self.agentStates, logTimeNs: nowWallNs, payload: Array(payload.utf8))
        hub.publish(channel: Self.agentPoses, logTimeNs: nowWallNs, payload: Array(poseScene(agents, nowWallNs).utf8))
    }

    /// A `foxglove.SceneUpdate` of the agents: arrow, grid outline and label each.
    func poseScene(_ agents: [[String: Any]], _ t: UInt64) -> String {
        var entities: [String] = []
        for a in agents {
            guard let id = a["id"] as? String, let x = a["x"] as? Double, let y = a["y"] as? Double,
                let yaw = a["yaw"] as? Double, let r = a["range_m"] as? Double
            else { continue }
            let q = "{\"x\":0,\"y\":0,\"z\":\(sin(yaw / 2)),\"w\":\(cos(yaw / 2))}"
            let pose = "{\"position\":{\"x\":\(x),\"y\":\(y),\"z\":0.2},\"orientation\":\(q)}"
            let frame = Pose2D(x: x, y: y, yaw: yaw)
            let corners = [(-r, -r), (r, -r), (r, r), (-r, r), (-r, -r)].map { (u, v) in
                let p = frame.toCommon(SIMD2(u, v))
                return "{\"x\":\(p.x),\"y\":\(p.y),\"z\":0.05}"
            }
            let label = String(
                format: "%@  w %.2f  %d bit  %.1f KB", id, a["width"] as? Double ?? 0, a["bits"] as? Int ?? 0,
                a["kb_per_frame"] as? Double ?? 0)
            entities.append(
                "{\"timestamp\":{\"sec\":\(t / 1_000_000_000),\"nsec\":\(t % 1_000_000_000)},\"frame_id\":\"map\",\"id\":\"agent/\(id)\",\"lifetime\":{\"sec\":2,\"nsec\":0},\"frame_locked\":false,\"metadata\":[],"
                    + "\"arrows\":[{\"pose\":\(pose),\"shaft_length\":3,\"shaft_diameter\":0.4,\"head_length\":1.2,\"head_diameter\":1,\"color\":{\"r\":0.3,\"g\":0.75,\"b\":1,\"a\":1}}],"
                    + "\"lines\":[{\"type\":0,\"pose\":{\"position\":{\"x\":0,\"y\":0,\"z\":0},\"orientation\":{\"x\":0,\"y\":0,\"z\":0,\"w\":1}},\"thickness\":0.15,\"scale_invariant\":false,\"points\":[\(corners.joined(separator: ","))],\"color\":{\"r\":0.3,\"g\":0.75,\"b\":1,\"a\":0.6},\"colors\":[],\"indices\":[]}],"
                    + "\"texts\":[{\"pose\":\(pose),\"billboard\":true,\"font_size\":14,\"scale_invariant\":true,\"color\":{\"r\":1,\"g\":1,\"b\":1,\"a\":1},\"text\":\"\(label)\"}]}")
        }
        return "{\"deletions\":[],\"entities\":[\(entities.joined(separator: ","))]}"
    }

    /// A `foxglove.SceneUpdate` with one entity: the agent's fused boxes in the world frame.
    func sceneUpdate(_ o: FusionService.Output) -> String {
        let sec = o.captureTimeNs / 1_000_000_000
        let nsec = o.captureTimeNs % 1_000_000_000
        var cubes: [String] = []
        cubes.reserveCapacity(o.boxes.count)
        for b in o.worldBoxes {
            let half = Double(b.yaw) / 2
            cubes.append(
                "{\"pose\":{\"position\":{\"x\":\(b.x),\"y\":\(b.y),\"z\":0.8},\"orientation\":{\"x\":0,\"y\":0,\"z\":\(sin(half)),\"w\":\(cos(half))}},\"size\":{\"x\":\(b.length),\"y\":\(b.width),\"z\":1.6},\"color\":{\"r\":1,\"g\":0.55,\"b\":0.1,\"a\":\(min(1, 0.35 + Double(b.score) * 0.6))}}"
            )
        }
        return
            "{\"deletions\":[],\"entities\":[{\"timestamp\":{\"sec\":\(sec),\"nsec\":\(nsec)},\"frame_id\":\"map\",\"id\":\"fused/\(o.agent)\",\"lifetime\":{\"sec\":0,\"nsec\":500000000},\"frame_locked\":false,\"metadata\":[{\"key\":\"agents\",\"value\":\"\(o.fusedAgents.joined(separator: ","))\"}],\"cubes\":[\(cubes.joined(separator: ","))]}]}"
    }
}
