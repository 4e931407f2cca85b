import Foundation
import Logging
import SlimCore
import SlimWire
import Synchronization

/// A region server's part in the fleet: its registration (``FleetRegistry``) and the handover
/// decisions for the agents it hears from (``HandoverPolicy``), with their counters.
public final class FleetMembership: Sendable {
    public let registry: FleetRegistry
    private let policy = Mutex(HandoverPolicy())
    private let sent = Mutex<[Handover.Action: Int]>([:])

    public init(registry: FleetRegistry) { self.registry = registry }

    /// Opens the membership: reads the map (the file, or the registry's copy), registers.
    /// - Parameter regionsFile: nil reads `<prefix>regions` from etcd.
    public static func start(
        etcd url: String, prefix: String, region: String, advertise: String, serverKey: [UInt8]?, name: String,
        regionsFile: String?, leaseTTLSeconds: Int, logger: Logger
    ) async throws -> FleetMembership {
        let etcd = try EtcdClient(url: url)
        let map: RegionMap
        if let regionsFile {
            map = try RegionMap.load(file: regionsFile)
        } else {
            let key = (prefix.hasSuffix("/") ? prefix : prefix + "/") + "regions"
            guard let kv = try await etcd.range(prefix: key).first(where: { $0.key == key }) else {
                throw EtcdError(call: "kv/range", problem: "no region map at \(key) and no fleet.regions file")
            }
            do { map = try JSONDecoder().decode(RegionMap.self, from: Data(kv.value)) } catch {
                throw EtcdError(call: "kv/range", problem: "\(key) is not a region map: \(error)")
            }
            try map.validate(file: "etcd \(key)")
        }
        guard map.region(named: region) != nil else {
            throw EtcdError(
                call: "register", problem: "region '\(region)' is not in the map (\(map.regions.map(\.name)))")
        }
        let registry = FleetRegistry(
            etcd: etcd, prefix: prefix, map: map,
            me: FleetMember(region: region, endpoint: advertise, serverKey: serverKey, name: name),
            ttlSeconds: leaseTTLSeconds, logger: logger)
        do { try await registry.register() } catch {
            // Not fatal: run() keeps trying, and the server serves its own region meanwhile.
            logger.warning("cannot register yet; retrying", metadata: ["error": "\(error)"])
        }
        return FleetMembership(registry: registry)
    }

    /// An agent opened a session: whatever it was told before is forgotten.
    public func joined(agent: String) { policy.withLock { $0.forget(agent) } }

    /// The Handovers to send an agent whose latest accepted frame was taken at (x, y).
    public func observe(agent: String, x: Double, y: Double) -> [Handover] {
        let view = registry.view
        let now = SystemClock.monotonicNs()
        let out = policy.withLock { $0.observe(agent: agent, x: x, y: y, view: view, nowNs: now) }
        if !out.isEmpty { sent.withLock { for h in out { $0[h.action, default: 0] += 1 } } }
        return out
    }

    /// The commits that send every agent this server is home to its standby (see
    /// ``HandoverPolicy/farewells(view:)``); call after the lease is revoked.
    public func farewells() -> [(agent: String, handover: Handover)] {
        let view = registry.view
        let out = policy.withLock { $0.farewells(view: view) }
        sent.withLock { $0[.commit, default: 0] += out.count }
        return out
    }

    /// Prometheus lines: regions served, live servers, Handovers sent by action, registry errors.
    public var prometheusText: String {
        let v = registry.view
        var lines = [
            "# HELP slimsplit_fleet_regions_served Regions this server serves now (its own and those it stands in for).",
            "# TYPE slimsplit_fleet_regions_served gauge",
            "slimsplit_fleet_regions_served \(v.served.count)",
            "# HELP slimsplit_fleet_servers_alive Region servers registered in etcd with a live lease.",
            "# TYPE slimsplit_fleet_servers_alive gauge",
            "slimsplit_fleet_servers_alive \(v.members.count)",
            "# HELP slimsplit_fleet_handovers_sent_total Handover messages sent to agents, by action.",
            "# TYPE slimsplit_fleet_handovers_sent_total counter",
        ]
        let s = sent.withLock { $0 }
        for a in [Handover.Action.cancel, .prepare, .commit, .standby] {
            lines.append("slimsplit_fleet_handovers_sent_total{action=\"\(a)\"} \(s[a] ?? 0)")
        }
        lines += [
            "# HELP slimsplit_fleet_registry_errors_total etcd calls that failed.",
            "# TYPE slimsplit_fleet_registry_errors_total counter",
            "slimsplit_fleet_registry_errors_total \(registry.errors)",
        ]
        return lines.joined(separator: "\n") + "\n"
    }
}
