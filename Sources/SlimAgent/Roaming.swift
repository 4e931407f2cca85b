import Logging
import SlimCore
import SlimWire

/// One move of an agent from one server to another.
public struct RoamingEvent: Sendable, Equatable {
    public enum Kind: String, Sendable {
        /// Make-before-break: the home server said `commit`; the new server was already (or is
        /// now) a session of the agent, the old one stays until the new one acknowledges.
        case handover
        /// The home server went silent: the agent moved to its standby (or a mirror) on its own.
        case failover
    }
    public var kind: Kind
    public var from: String
    public var to: String
    /// Monotonic ns when the agent made `to` its home, and the wall-clock time then.
    public var atNs: UInt64
    public var atWallNs: UInt64 = SystemClock.wallNs()
    /// The last Result taken from the old home (monotonic ns; 0: none).
    public var lastOldResultNs: UInt64
    /// For a failover: when the old home's oldest unacknowledged frame was sent (the silence began).
    public var silentSinceNs: UInt64 = 0
    /// The first Result taken from the new home, and its first Ack after the move (monotonic ns;
    /// 0: none yet).
    public var firstNewResultNs: UInt64 = 0
    public var firstNewAckNs: UInt64 = 0
    /// Any Result on either session, taken or not: the old server's last, the new server's first.
    /// Make-before-break: the new server already answers while the old one still does, so the
    /// first comes before the last (a negative gap: no moment without a server).
    public var lastOldAnyResultNs: UInt64 = 0
    public var firstNewAnyResultNs: UInt64 = 0

    /// From the last Result received from the old server to the first from the new one, ms
    /// (negative: both answered at once for that long).
    public var resultGapMs: Double? {
        guard lastOldAnyResultNs > 0, firstNewAnyResultNs > 0 else { return nil }
        return (Double(firstNewAnyResultNs) - Double(lastOldAnyResultNs)) / 1e6
    }

    /// From the last Result taken from the old home to the first taken from the new one, ms: the
    /// interval the agent's stream of detections had across the move.
    public var takenResultGapMs: Double? {
        guard lastOldResultNs > 0, firstNewResultNs > 0 else { return nil }
        return (Double(firstNewResultNs) - Double(lastOldResultNs)) / 1e6
    }
}

/// An agent's sessions with the fleet's servers: one *home* (its frames' Results come from
/// there), mirrors (servers whose region's margin holds the agent: every frame goes to them
/// too) and a standby (where to go if the home falls silent). Driven by the home server's
/// Handover messages (PROTOCOL.md §4.6), and by the agent's own failover check, ``step(now:)``.
///
/// Every link shares the agent's sequence numbers and frame ledger, and a new home takes over
/// the old one's goodput estimate, so adaptation continues across moves. With a single server
/// (no Handover ever arrives) this is one link and costs nothing.
public final class Roaming: Sendable {
    /// Opens a session to a server (a new `FeatureAgent` sharing this agent's identity, sequence and ledger).
    public typealias Connect = @Sendable (_ endpoint: String, _ serverKey: [UInt8]?) throws -> FeatureAgent

    public struct Options: Sendable {
        /// The home is declared dead when a frame has waited this long for its Ack.
        public var failoverAfterNs: UInt64 = 600_000_000
        /// After a commit, the old home stays (as a mirror) this long past the new home's first
        /// Ack, unless the new home asks to keep it (`prepare`).
        public var leaveGraceNs: UInt64 = 300_000_000
        /// A server the agent failed over from is not taken back as home for this long.
        public var avoidFailedNs: UInt64 = 5_000_000_000
        public init() {}
    }

    private struct Link: Sendable {
        var agent: FeatureAgent
        var task: Task<Void, Never>?
        var region: String
        /// The Handover that opened this link (nil for the first), to open it again.
        var origin: Handover?
        var epoch: UInt32 = 0
        /// `prepare` and `standby` advice this server gave before it was the agent's home (a
        /// Handover can overtake the commit that makes its sender home): applied when it becomes home.
        var early: [Handover] = []
        /// Close this mirror once the home has acknowledged a frame and this time has passed.
        var leaveAfterNs: UInt64?
        var endpoint: String { agent.endpoint.endpoint }
    }

    private struct State: Sendable {
        var home: Link
        var mirrors: [Link] = []
        var standby: Handover?
        var failed: [String: UInt64] = [:]
        /// The last `keptEvents` moves; the newest `liveEvents` of them still read their links'
        /// statistics (first Result and Ack of the new home), older ones are frozen, so that a
        /// long drive keeps neither an unbounded list nor closed links' send buffers alive.
        var events: [RoamingEvent] = []
        var eventLinks: [(from: FeatureAgent, to: FeatureAgent)?] = []
        var moves: [RoamingEvent.Kind: Int] = [:]
        var retired: [AgentLinkStats] = []
        var refused = 0
    }
    static let keptEvents = 256
    static let liveEvents = 8
    static let keptRetired = 32

    private static func read(_ e: RoamingEvent, _ l: (from: FeatureAgent, to: FeatureAgent)?) -> RoamingEvent {
        guard let l else { return e }
        var e = e
        let new = l.to.stats
        e.firstNewResultNs = new.firstTakenResultAtNs
        e.firstNewAckNs = new.firstAckSinceWatchNs
        e.firstNewAnyResultNs = new.firstResultAtNs
        e.lastOldAnyResultNs = l.from.stats.lastResultAtNs
        return e
    }

    public let options: Options
    private let connect: Connect?
    private let logger: Logger
    private let state: Locked<State>

    /// - Parameter connect: opens sessions to other servers; nil keeps the agent on `home` (a
    ///   Handover is then refused and logged).
    public init(
        home: FeatureAgent, region: String = "", options: Options = Options(), logger: Logger, connect: Connect?
    ) {
        self.options = options
        self.connect = connect
        self.logger = logger
        // The first link can be reopened too (a failover back to it): its origin is the configured server.
        let origin = Handover(
            epoch: 0, action: .commit, region: region.isEmpty ? "home" : region, endpoint: home.endpoint.endpoint)
        state = Locked(State(home: Link(agent: home, task: nil, region: region, origin: origin)))
        listen(home)
    }

    /// The agent's home link now.
    public var home: FeatureAgent { state.value.home.agent }
    /// The mirrors' links now.
    public var mirrors: [FeatureAgent] { state.value.mirrors.map(\.agent) }
    public var events: [RoamingEvent] {
        let s = state.value
        return zip(s.events, s.eventLinks).map { Self.read($0, $1) }
    }
    /// Moves since the start, by kind (``events`` keeps the last 256).
    public var moves: [RoamingEvent.Kind: Int] { state.value.moves }
    /// Handover messages refused: from a server that is not the agent's home, or older epochs.
    public var refused: Int { state.value.refused }
    /// Every link's statistics, the closed ones included, home first.
    public var linkStats: [(endpoint: String, stats: AgentLinkStats)] {
        let s = state.value
        return [(s.home.endpoint, s.home.agent.stats)] + s.mirrors.map { ($0.endpoint, $0.agent.stats) }
            + s.retired.map { ("closed", $0) }
    }

    /// Encodes and submits one frame to the home, mirrored to every mirror.
    public func submit(_ header: FeatureFrameHeader, dense: UnsafeBufferPointer<UInt8>, mask: UnsafeRawBufferPointer?)
        -> Int?
    {
        let (home, mirrors) = state.withLock { s in (s.home.agent, s.mirrors.map(\.agent)) }
        return home.submit(header, dense: dense, mask: mask, mirrors: mirrors)
    }

    /// Sends the agent's own detections home (and to the mirrors), the boxes rung.
    public func submit(boxes: Boxes) -> Int? {
        let (home, mirrors) = state.withLock { s in (s.home.agent, s.mirrors.map(\.agent)) }
        return home.submit(boxes: boxes, mirrors: mirrors)
    }

    /// Runs the home's link task (the first link's; later links run their own).
    public func run() async {
        await home.run()
    }

    /// The agent's own checks, once per frame: mirrors left behind after a commit are closed,
    /// and a silent home is replaced by a mirror that answers, or by the standby.
    public func step(now: UInt64) {
        var toClose: [Link] = []
        state.withLock { s in
            if s.home.agent.stats.acks > 0 {
                s.mirrors.removeAll { m in
                    guard let t = m.leaveAfterNs, now >= t else { return false }
                    toClose.append(m)
                    return true
                }
            }
            guard let age = s.home.agent.inFlightAge(now: now), age > options.failoverAfterNs else { return }
            let silentSince = now &- age
            // A mirror that answers, else the standby. Either way a new session: its Hello makes
            // the server accept the unacknowledged frame, which is older than what a mirror's
            // session has already seen (the server fuses each sequence number once).
            var target = s.standby.flatMap { $0.endpoint != s.home.endpoint ? $0 : nil }
            let mirror = s.mirrors.firstIndex {
                $0.agent.stats.acks > 0 && $0.leaveAfterNs == nil && $0.origin != nil
            }
            if let mirror { target = s.mirrors[mirror].origin }
            guard let target, let next = open(target, &s) else {
                return  // nowhere to go: libzmq keeps reconnecting to the home
            }
            let old = s.home
            s.failed[old.endpoint] = now
            // Whatever is unacknowledged goes to the new session, oldest first, each frame once:
            // the home's frame and the one on the mirror being replaced (it may be newer).
            var unacked = [old.agent.unackedFrame].compactMap { $0 }
            toClose.append(old)
            if let mirror {
                let m = s.mirrors.remove(at: mirror)
                if let f = m.agent.unackedFrame, !unacked.contains(where: { $0.sequence == f.sequence }) {
                    unacked.append(f)
                }
                toClose.append(m)
            }
            for f in unacked.sorted(by: { $0.sequence < $1.sequence }) {
                f.bytes.withUnsafeBytes { _ = next.agent.submitEncoded($0, sequence: f.sequence, resend: true) }
            }
            promote(next, from: old, kind: .failover, now: now, silentSince: silentSince, &s)
        }
        close(toClose)
    }

    /// A Handover from one of the links (its run task calls this).
    private func received(_ h: Handover, on endpoint: String) {
        let now = SystemClock.monotonicNs()
        var toClose: [Link] = []
        state.withLock { s in
            guard endpoint == s.home.endpoint, h.epoch > s.home.epoch else {
                s.refused += 1
                if let i = s.mirrors.firstIndex(where: { $0.endpoint == endpoint }),
                    h.action == .prepare || h.action == .standby
                {
                    s.mirrors[i].early = Array((s.mirrors[i].early + [h]).suffix(4))
                }
                return
            }
            s.home.epoch = h.epoch
            apply(h, now: now, &s, &toClose)
        }
        close(toClose)
    }

    /// Acts on a Handover from the home server.
    private func apply(_ h: Handover, now: UInt64, _ s: inout State, _ toClose: inout [Link]) {
        guard h.endpoint != s.home.endpoint else { return }
        switch h.action {
        case .standby:
            s.standby = h
            s.home.agent.retainsFrames = true  // there is somewhere to fail over to now
        case .prepare:
            if let i = s.mirrors.firstIndex(where: { $0.endpoint == h.endpoint }) {
                s.mirrors[i].leaveAfterNs = nil
            } else if let l = open(h, &s) {
                s.mirrors.append(l)
            }
        case .cancel:
            s.mirrors.removeAll { m in
                guard m.endpoint == h.endpoint else { return false }
                toClose.append(m)
                return true
            }
        case .commit:
            if let t = s.failed[h.endpoint], now &- t < options.avoidFailedNs {
                s.refused += 1
                return
            }
            let next: Link
            if let i = s.mirrors.firstIndex(where: { $0.endpoint == h.endpoint }) {
                next = s.mirrors.remove(at: i)
            } else if let l = open(h, &s) {
                next = l
            } else {
                return
            }
            var old = s.home
            old.leaveAfterNs = now + options.leaveGraceNs
            s.mirrors.append(old)
            promote(next, from: old, kind: .handover, now: now, silentSince: 0, &s)
            for e in next.early { apply(e, now: now, &s, &toClose) }
        }
    }

    private func promote(
        _ next: Link, from old: Link, kind: RoamingEvent.Kind, now: UInt64, silentSince: UInt64, _ s: inout State
    ) {
        var next = next
        next.leaveAfterNs = nil
        next.epoch = next.early.map(\.epoch).max() ?? 0  // the new home numbers its own Handovers
        defer { s.home.early = [] }
        next.agent.adopt(estimator: old.agent.estimatorState)
        old.agent.acceptsResults = false
        next.agent.acceptsResults = true
        s.home = next
        if s.standby?.endpoint == next.endpoint { s.standby = nil }  // the new home names its own
        s.events.append(
            RoamingEvent(
                kind: kind, from: old.endpoint, to: next.endpoint, atNs: now,
                lastOldResultNs: old.agent.stats.lastTakenResultAtNs, silentSinceNs: silentSince))
        s.eventLinks.append((old.agent, next.agent))
        s.moves[kind, default: 0] += 1
        if s.eventLinks.count > Self.liveEvents {  // freeze the oldest still reading its links
            let i = s.eventLinks.count - Self.liveEvents - 1
            s.events[i] = Self.read(s.events[i], s.eventLinks[i])
            s.eventLinks[i] = nil
        }
        if s.events.count > Self.keptEvents {
            s.events.removeFirst(s.events.count - Self.keptEvents)
            s.eventLinks.removeFirst(s.eventLinks.count - Self.keptEvents)
        }
        next.agent.watchAcks(since: now)
        logger.info(
            kind == .handover ? "handover" : "failover",
            metadata: ["from": "\(old.endpoint)", "to": "\(next.endpoint)", "region": "\(next.region)"])
    }

    private func open(_ h: Handover, _ s: inout State) -> Link? {
        guard let connect else {
            s.refused += 1
            logger.warning("a Handover asks for a second server, but this agent cannot open one")
            return nil
        }
        do {
            let a = try connect(h.endpoint, h.curveKey)
            a.acceptsResults = false
            a.retainsFrames = true
            s.home.agent.retainsFrames = true  // the new link is somewhere to fail over to
            listen(a)
            return Link(agent: a, task: Task { await a.run() }, region: h.region, origin: h)
        } catch {
            logger.warning("cannot open a session", metadata: ["endpoint": "\(h.endpoint)", "error": "\(error)"])
            return nil
        }
    }

    private func listen(_ a: FeatureAgent) {
        let endpoint = a.endpoint.endpoint
        a.onHandover { [weak self] h in self?.received(h, on: endpoint) }
    }

    private func close(_ links: [Link]) {
        guard !links.isEmpty else { return }
        state.withLock { s in
            s.retired += links.map { $0.agent.stats }
            if s.retired.count > Self.keptRetired { s.retired.removeFirst(s.retired.count - Self.keptRetired) }
        }
        for l in links { l.agent.endpoint.close() }
    }

    /// Closes every link (at exit).
    public func closeAll() async {
        let s = state.value
        for l in [s.home] + s.mirrors { l.agent.endpoint.close() }
        for l in s.mirrors { await l.task?.value }
    }
}
