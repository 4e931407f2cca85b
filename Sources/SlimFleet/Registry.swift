import Foundation
import Logging
import Synchronization

/// A region server as the registry knows it.
public struct FleetMember: Sendable, Equatable, Codable {
    /// The region it serves (its own; it may take over others' as their standby).
    public var region: String
    /// The endpoint agents connect to (`tcp://host:port`), as they must write it.
    public var endpoint: String
    /// Its Curve public key, hex (nil: Curve off).
    public var serverKey: String?
    /// Instance name (pod or host name), for people.
    public var name: String

    public init(region: String, endpoint: String, serverKey: [UInt8]? = nil, name: String) {
        self.region = region
        self.endpoint = endpoint
        self.serverKey = serverKey.map { $0.map { String(format: "%02x", $0) }.joined() }
        self.name = name
    }

    /// The key's 32 bytes, or nil.
    public var serverKeyBytes: [UInt8]? {
        guard let h = serverKey, h.utf8.count == 64 else { return nil }
        var out: [UInt8] = []
        var i = h.startIndex
        while i < h.endIndex {
            let j = h.index(i, offsetBy: 2)
            guard let b = UInt8(h[i..<j], radix: 16) else { return nil }
            out.append(b)
            i = j
        }
        return out
    }
}

/// The fleet as one server sees it: the region map and which servers are alive.
public struct FleetView: Sendable, Equatable {
    public var map: RegionMap
    /// Live servers by their own region (from the registry; a dead one's lease has expired).
    public var members: [String: FleetMember]
    public var me: FleetMember

    public init(map: RegionMap, members: [String: FleetMember], me: FleetMember) {
        self.map = map
        self.members = members
        self.me = me
    }

    /// The server that serves `region` now: its own if alive, else its standby's (followed
    /// along the map's standby chain), else nil.
    public func server(for region: String) -> FleetMember? {
        var r = region
        var seen: Set<String> = []
        while seen.insert(r).inserted {
            if let m = members[r] { return m }
            guard let s = map.region(named: r)?.standby else { return nil }
            r = s
        }
        return nil
    }

    /// Regions this server serves now (its own plus those it stands in for).
    public var served: [String] { map.regions.map(\.name).filter { server(for: $0) == me } }
}

/// Registers a region server in etcd under a lease and keeps it alive; watches the other
/// servers' registrations (by polling, a few times a second) so that every server knows who
/// serves which region. A server that dies stops renewing its lease; etcd removes its key
/// `ttl` seconds later, and the region's standby starts serving it.
///
/// Keys: `<prefix>servers/<region>` → the ``FleetMember`` as JSON (leased);
/// `<prefix>regions` → the region map as JSON (written by every server at start, for operators).
public final class FleetRegistry: Sendable {
    public let etcd: EtcdClient
    public let prefix: String
    public let ttlSeconds: Int
    public let pollSeconds: Double
    private let logger: Logger
    private let current: Mutex<FleetView>
    private let lease = Mutex<Int64?>(nil)
    private let stopped = Mutex(false)
    private let errorCount = Mutex(0)

    public init(
        etcd: EtcdClient, prefix: String = "/slimsplit/", map: RegionMap, me: FleetMember, ttlSeconds: Int = 2,
        pollSeconds: Double = 0.2, logger: Logger
    ) {
        self.etcd = etcd
        self.prefix = prefix.hasSuffix("/") ? prefix : prefix + "/"
        self.ttlSeconds = ttlSeconds
        self.pollSeconds = pollSeconds
        self.logger = logger
        // Until the first read, the server knows only itself.
        current = Mutex(FleetView(map: map, members: [me.region: me], me: me))
    }

    public var view: FleetView { current.withLock { $0 } }
    /// etcd calls that failed (each logged once per distinct problem burst).
    public var errors: Int { errorCount.withLock { $0 } }

    /// Registers (lease, put) and publishes the map; throws when etcd cannot be reached at all.
    public func register() async throws(EtcdError) {
        let v = view
        let id = try await etcd.grant(ttlSeconds: ttlSeconds)
        try await etcd.put(prefix + "servers/" + v.me.region, try Self.json(v.me), lease: id)
        try await etcd.put(prefix + "regions", try Self.json(v.map))
        lease.withLock { $0 = id }
        logger.info(
            "registered",
            metadata: ["region": "\(v.me.region)", "lease_ttl_s": "\(ttlSeconds)", "etcd": "\(etcd.host):\(etcd.port)"])
        try await refresh()
    }

    /// Reads the live servers once.
    public func refresh() async throws(EtcdError) {
        let kvs = try await etcd.range(prefix: prefix + "servers/")
        var members: [String: FleetMember] = [:]
        for kv in kvs {
            guard let m = try? JSONDecoder().decode(FleetMember.self, from: Data(kv.value)) else {
                logger.warning("registry entry is not a server", metadata: ["key": "\(kv.key)"])
                continue
            }
            members[m.region] = m
        }
        let changed: (FleetView, FleetView)? = current.withLock { v in
            let old = v
            v.members = members
            return old == v ? nil : (old, v)
        }
        if let (old, new) = changed {
            logger.info(
                "fleet changed",
                metadata: [
                    "servers": "\(new.members.keys.sorted())", "serving": "\(new.served)",
                    "was_serving": "\(old.served)",
                ])
        }
    }

    /// Keeps the lease alive (every ttl/3) and the view fresh (every `pollSeconds`) until `stop()`.
    /// A lost lease (etcd restarted, or this process paused past the TTL) is registered anew.
    public func run() async {
        var lastKeepAlive = ContinuousClock.now
        while !stopped.withLock({ $0 }) {
            do throws(EtcdError) {
                if lease.withLock({ $0 }) == nil {
                    if stopped.withLock({ $0 }) { break }  // stop() took the lease: never register again
                    try await register()
                }
                if ContinuousClock.now - lastKeepAlive >= .milliseconds(ttlSeconds * 1000 / 3),
                    let id = lease.withLock({ $0 })
                {
                    lastKeepAlive = ContinuousClock.now
                    if try await etcd.keepAlive(lease: id) <= 0 {
                        logger.warning("lease expired; registering again", metadata: ["lease": "\(id)"])
                        lease.withLock { $0 = nil }
                        continue
                    }
                }
                try await refresh()
            } catch {
                let n = errorCount.withLock {
                    $0 += 1
                    return $0
                }
                if n == 1 || n % 50 == 0 {
                    logger.warning("registry", metadata: ["error": "\(error)", "errors": "\(n)"])
                }
            }
            try? await Task.sleep(for: .milliseconds(Int(pollSeconds * 1000)))
        }
    }

    /// Stops `run()` and revokes the lease, so that the standby takes over at once (graceful exit).
    public func stop() async {
        stopped.withLock { $0 = true }
        let id = lease.withLock { l in
            defer { l = nil }
            return l
        }
        if let id { try? await etcd.revoke(lease: id) }
    }

    static func json(_ v: some Encodable) throws(EtcdError) -> [UInt8] {
        do {
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys]
            return Array(try e.encode(v))
        } catch { throw EtcdError(call: "encode", problem: "\(error)") }
    }
}
