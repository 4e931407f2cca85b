import SlimWire

/// What a region server tells each agent it hears from, as the agent moves (PROTOCOL.md §4.6):
///
/// - the agent's home region (whose core holds it) is served here: the nearest other live
///   server whose region's margin holds it gets its frames too (`prepare`, or `cancel` once it
///   leaves the margin), and it learns where to go if this server dies (`standby`);
/// - its home region is served elsewhere: `commit` to that server. (A server that is only a
///   mirror for the agent says `commit` to the agent's home, which the agent ignores.)
///
/// Changes are sent at once, one Handover per decision, numbered per agent; and every
/// `restateNs` the current advice is said again, since a Handover that reached the agent before
/// it made this server its home was (rightly) ignored. Pure logic, no I/O.
public struct HandoverPolicy: Sendable {
    private struct Told: Sendable {
        var epoch: UInt32 = 0
        var mirror: FleetMember?
        var commit: String?
        var standby: String?
        var saidAtNs: UInt64 = 0
    }
    private var agents: [String: Told] = [:]
    public var restateNs: UInt64

    public init(restateNs: UInt64 = 1_000_000_000) { self.restateNs = restateNs }

    /// Leaving (a graceful shutdown, after the lease is revoked): every agent this server is home
    /// to is told to commit to the standby it was given, so that it moves make-before-break
    /// instead of failing over after a silence. Agents with no standby are left to fail over.
    public mutating func farewells(view: FleetView) -> [(agent: String, handover: Handover)] {
        var out: [(String, Handover)] = []
        for (agent, var t) in agents where t.commit == nil {
            guard let sb = t.standby, let m = view.members.values.first(where: { $0.endpoint == sb }), m != view.me
            else { continue }
            t.epoch &+= 1
            out.append(
                (
                    agent,
                    Handover(
                        epoch: t.epoch, action: .commit, region: m.region, endpoint: m.endpoint,
                        serverKey: m.serverKeyBytes)
                ))
            t.commit = m.endpoint
            agents[agent] = t
        }
        return out.sorted { $0.0 < $1.0 }
    }

    /// Forget what an agent was told (it opened a new session: a restarted agent knows nothing).
    public mutating func forget(_ agent: String) { agents[agent] = nil }

    /// The Handovers to send `agent`, now at world position (x, y), given the fleet's state.
    public mutating func observe(agent: String, x: Double, y: Double, view: FleetView, nowNs: UInt64) -> [Handover] {
        var t = agents[agent] ?? Told()
        let restating = nowNs &- t.saidAtNs >= restateNs  // say it all again (an agent ignores what it has)
        if restating {
            t.saidAtNs = nowNs
            t.commit = nil
            t.standby = nil
        }
        var out: [Handover] = []
        func say(_ action: Handover.Action, _ m: FleetMember) {
            t.epoch &+= 1
            out.append(
                Handover(
                    epoch: t.epoch, action: action, region: m.region, endpoint: m.endpoint,
                    serverKey: m.serverKeyBytes))
        }
        defer { agents[agent] = t }
        let home = view.map.home(x: x, y: y)
        if let h = home, let owner = view.server(for: h.name), owner != view.me {
            if t.commit != owner.endpoint {
                say(.commit, owner)
                t.commit = owner.endpoint
                t.mirror = nil
            }
            return out
        }
        t.commit = nil
        // Home here (or outside every region: the agent stays with the server it has).
        let want = view.map.overlapping(x: x, y: y, except: home?.name).lazy
            .compactMap { view.server(for: $0.name) }.first { $0 != view.me }
        if want != t.mirror || (restating && want != nil) {
            if let w = want {
                say(.prepare, w)
            } else if let old = t.mirror {
                say(.cancel, old)
            }
            t.mirror = want
        }
        if let sbRegion = home?.standby, let sb = view.server(for: sbRegion), sb != view.me, t.standby != sb.endpoint {
            say(.standby, sb)
            t.standby = sb.endpoint
        }
        return out
    }
}
