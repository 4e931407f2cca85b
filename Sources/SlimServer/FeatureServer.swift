import Logging
import SlimTransport
import SlimWire

/// What the server knows of one connected agent (one routing id).
public struct AgentStats: Sendable, Equatable {
    public var agentID: String?
    /// Hellos accepted (each answered with a Control).
    public var hellos = 0
    /// Name of the agent's Curve key in the allow-list, when Curve is on.
    public var keyName: String?
    /// Numbered messages accepted (FeatureFrames and Boxes), and of them Boxes.
    public var frames = 0
    public var boxesMessages = 0
    public var bytes = 0
    public var rawBytes = 0
    public var lastSequence: UInt64 = 0
    public var widthPerMille: UInt16 = 0
    public var bits: UInt8 = 0
    public var sentCells = 0
    public var cells = 0
    /// Rejected messages by reason code.
    public var rejected: [RejectReason: Int] = [:]
    /// Messages to this agent the socket dropped, by reason (send_queue_full, unroutable).
    public var dropped: [String: Int] = [:]
    /// Acks and Controls held for this agent because its queue is full (never dropped).
    public var backlog = 0

    public var rejectedTotal: Int { rejected.values.reduce(0, +) }
}

/// Server settings that concern the protocol (transport settings live in `SocketOptions`).
public struct ServerOptions: Sendable {
    public var limits = WireLimits()
    /// Acks and Controls an agent may leave unread (held by the server, which never drops them)
    /// before its numbered messages are refused [`ack_backlog`]: bounds the memory one agent
    /// that sends without reading can take.
    public var ackBacklog = 256
    /// Seconds between two log lines for the same agent and reject reason.
    public var rejectLogInterval: Double = 5
    public init() {}
}

/// Receives features from many agents: validates every message, keeps one session per routing
/// id, acknowledges accepted frames and hands them to `onFrame`.
///
/// A bad message is rejected with a `WireError`, counted per agent and reason, and logged at
/// most once per interval per agent and reason; nothing else is affected. Runs on one task
/// (`run()`), so per-agent state needs no locking; `stats` may be read from any thread.
public final class FeatureServer: Sendable {
    public typealias FrameHandler = @Sendable (_ agent: String, _ frame: FeatureFrameDecoder.Decoded) -> Void
    /// Checks a frame that passed the session's checks against what the server can use (the
    /// model's transmitted map), before it is acknowledged: a returned error rejects it.
    public typealias FrameCheck = @Sendable (_ agent: String, _ header: FeatureFrameHeader) -> WireError?

    private struct Session {
        var hello: Hello?
        var lastSequence: UInt64?
    }

    public let endpoint: any ServerTransport
    public let options: ServerOptions
    private let logger: Logger
    private let rejectLog: RateLimitedLog
    private let statsByRoute = Locked<[RoutingID: AgentStats]>([:])
    /// The routing id of each agent's current session, for sending it Results.
    private let routes = Locked<[String: RoutingID]>([:])
    private let controlEpoch = Locked<UInt32>(0)
    private let onFrame: FrameHandler?
    private let check: FrameCheck?
    private let onJoin: (@Sendable (_ agent: String) -> Void)?
    public typealias BoxesHandler = @Sendable (_ agent: String, _ boxes: Boxes) -> Void
    private let onBoxes: BoxesHandler?

    public init(
        endpoint: any ServerTransport, options: ServerOptions = ServerOptions(), logger: Logger,
        check: FrameCheck? = nil,
        onFrame: FrameHandler? = nil, onBoxes: BoxesHandler? = nil, onJoin: (@Sendable (_ agent: String) -> Void)? = nil
    ) {
        self.check = check
        self.onJoin = onJoin
        self.onBoxes = onBoxes
        self.endpoint = endpoint
        self.options = options
        self.logger = logger
        self.onFrame = onFrame
        rejectLog = RateLimitedLog(logger: logger, interval: options.rejectLogInterval)
    }

    /// A snapshot of every agent seen, keyed by agent id (or key name, or routing id before a
    /// valid Hello).
    public var stats: [String: AgentStats] {
        var out: [String: AgentStats] = [:]
        let counters = endpoint.counters
        for (route, var s) in statsByRoute.value {
            let key = s.agentID ?? s.keyName ?? "route-\(route)"
            s.dropped = counters.droppedByRoute[route] ?? [:]
            s.backlog = counters.reliableBacklog[route] ?? 0
            if var existing = out[key] {  // an agent that reconnected under a new routing id
                existing.frames += s.frames
                existing.hellos += s.hellos
                existing.boxesMessages += s.boxesMessages
                existing.bytes += s.bytes
                existing.rawBytes += s.rawBytes
                existing.rejected.merge(s.rejected, uniquingKeysWith: +)
                existing.dropped.merge(s.dropped, uniquingKeysWith: +)
                existing.backlog += s.backlog
                if s.lastSequence > existing.lastSequence {
                    existing.lastSequence = s.lastSequence
                    existing.widthPerMille = s.widthPerMille
                    existing.bits = s.bits
                }
                out[key] = existing
            } else {
                out[key] = s
            }
        }
        return out
    }

    /// Total rejections by reason, all agents together, including refused Curve handshakes.
    public var rejections: [RejectReason: Int] {
        var out: [RejectReason: Int] = [:]
        for s in statsByRoute.value.values { out.merge(s.rejected, uniquingKeysWith: +) }
        let unauth = endpoint.unauthenticated.values.reduce(0, +)
        if unauth > 0 { out[.unauthenticated] = unauth }
        return out
    }

    /// Serves until the endpoint is closed.
    public func run() async {
        var sessions: [RoutingID: Session] = [:]
        let decoder = FeatureFrameDecoder(limits: options.limits)
        for await event in endpoint.events {
            guard case .message(let m) = event else { continue }
            let route = m.routingID
            var session = sessions[route] ?? Session()
            do throws(WireError) {
                let bytes = m.message.bytes
                guard m.extraParts == 0 else {
                    throw WireError(
                        .lengthMismatch,
                        "multi-part message (\(m.extraParts + 1) parts); the protocol uses single-part messages")
                }
                let env = try Envelope.open(bytes, limits: options.limits)
                switch env.kind {
                case .hello:
                    var r = WireReader(env.body)
                    let hello = try Hello(body: &r, payload: env.payload, limits: options.limits)
                    // With Curve on, the key is the identity: an agent speaks only under its key's name.
                    if let key = m.peerName, key != hello.agentID {
                        throw WireError(
                            .identityMismatch, "Hello says agent \(hello.agentID), the connection's key is \(key)")
                    }
                    try requireReading(route)
                    session = Session(hello: hello, lastSequence: nil)
                    sessions[route] = session
                    statsByRoute.withLock { s in
                        s[route, default: AgentStats()].agentID = hello.agentID
                        s[route]!.hellos += 1
                        s[route]!.keyName = m.peerName
                    }
                    routes.withLock { $0[hello.agentID] = route }
                    onJoin?(hello.agentID)
                    let control = Control(
                        epoch: controlEpoch.withLock {
                            $0 &+= 1
                            return $0
                        }, reason: 0)
                    endpoint.send(to: route, length: control.encodedLength) { control.encode(into: $0) }
                    logger.info(
                        "agent joined",
                        metadata: [
                            "agent": "\(hello.agentID)", "model": "\(hello.modelID)",
                            "key": "\(m.peerName ?? "-")",
                        ])
                case .featureFrame:
                    guard let hello = session.hello else {
                        throw WireError(.helloRequired, "FeatureFrame before Hello on this connection")
                    }
                    let frame = try decoder.decode(env, messageLength: bytes.count)
                    let h = frame.header
                    guard h.agentID == hello.agentID else {
                        throw WireError(.agentMismatch, "frame says agent \(h.agentID), session is \(hello.agentID)")
                    }
                    guard Int(h.widthIndex) < hello.widths.count else {
                        throw WireError(
                            .fieldOutOfRange,
                            "width_index \(h.widthIndex) but Hello announced \(hello.widths.count) widths")
                    }
                    guard hello.bitsMask & (1 << (h.bits - 1)) != 0 else {
                        throw WireError(.fieldOutOfRange, "bits \(h.bits) not announced in Hello's bits_mask")
                    }
                    if let check, let problem = check(hello.agentID, h) { throw problem }
                    try accept(h.sequence, of: route, &session, &sessions, message: m)
                    statsByRoute.withLock { s in
                        var st = s[route, default: AgentStats()]
                        st.frames += 1
                        st.bytes += bytes.count
                        st.rawBytes += h.rawLength
                        st.lastSequence = h.sequence
                        st.widthPerMille = hello.widths[Int(h.widthIndex)]
                        st.bits = h.bits
                        st.sentCells = frame.sentCells
                        st.cells = h.cells
                        s[route] = st
                    }
                    onFrame?(hello.agentID, frame)
                case .boxes:
                    guard let hello = session.hello else {
                        throw WireError(.helloRequired, "Boxes before Hello on this connection")
                    }
                    var r = WireReader(env.body)
                    let boxes = try Boxes(body: &r, payload: env.payload, limits: options.limits)
                    guard boxes.agentID == hello.agentID else {
                        throw WireError(
                            .agentMismatch, "Boxes says agent \(boxes.agentID), session is \(hello.agentID)")
                    }
                    try accept(boxes.sequence, of: route, &session, &sessions, message: m)
                    statsByRoute.withLock { s in
                        var st = s[route, default: AgentStats()]
                        st.frames += 1
                        st.boxesMessages += 1
                        st.bytes += bytes.count
                        st.rawBytes += bytes.count
                        st.lastSequence = boxes.sequence
                        s[route] = st
                    }
                    onBoxes?(hello.agentID, boxes)
                case .ack, .result, .control, .handover:
                    throw WireError(.unexpectedKind, "\(env.kind) is sent by servers, not agents")
                }
            } catch {
                reject(error, route: route, session: session, peerName: m.peerName)
            }
        }
    }

    /// Takes a numbered message (FeatureFrame or Boxes) that passed its checks: its sequence must
    /// follow the session's last, then it is acknowledged (PROTOCOL.md §4.3).
    private func accept(
        _ sequence: UInt64, of route: RoutingID, _ session: inout Session, _ sessions: inout [RoutingID: Session],
        message m: ReceivedMessage
    ) throws(WireError) {
        if let last = session.lastSequence, sequence <= last {
            throw WireError(.staleSequence, "sequence \(sequence) not after \(last)")
        }
        try requireReading(route)
        session.lastSequence = sequence
        sessions[route] = session
        let now = SystemClock.monotonicNs()
        let ack = Ack(
            sequence: sequence, receiveTimeNs: SystemClock.wallNs() &- (now &- m.receivedAtNs),
            bytesReceived: UInt32(m.message.bytes.count), queueDelayNs: UInt32(clamping: now &- m.receivedAtNs))
        endpoint.send(to: route, length: ack.encodedLength) { ack.encode(into: $0) }
    }

    /// Acks and Controls are never dropped for a full queue: they wait for the agent to read. An
    /// agent that leaves `ackBacklog` of them unread gets no more until it does (its numbered
    /// messages and Hellos are refused), so one agent cannot make the server hold without bound.
    private func requireReading(_ route: RoutingID) throws(WireError) {
        let unread = endpoint.reliableBacklog(of: route)
        guard unread < options.ackBacklog else {
            throw WireError(
                .ackBacklog, "\(unread) Acks and Controls unread (limit \(options.ackBacklog)): read them first")
        }
    }

    /// Sends a message (a Result, a Handover) to an agent's current session; false if the agent
    /// has none. Results are best-effort (dropped, counted, when the agent's queue is full);
    /// everything else waits for room, like Acks and Controls.
    @discardableResult
    public func send(_ message: some WireMessage, toAgent agent: String) -> Bool {
        guard let route = routes.value[agent] else { return false }
        // A Result is replaced by the next pass's: it is shed when the agent's queue is full.
        let delivery: Delivery = type(of: message).kind == .result ? .bestEffort : .reliable
        endpoint.send(to: route, length: message.encodedLength, delivery: delivery) { message.encode(into: $0) }
        return true
    }

    /// Caps an agent (Control, reason 1 "bandwidth budget"): the agent keeps width index and
    /// bit depth at or below these. False if the agent has no session.
    @discardableResult
    public func sendControl(
        toAgent agent: String, maxWidthIndex: Int, maxBits: Int, maxRateHz: Float = 0, reason: UInt8 = 1
    ) -> Bool {
        guard let route = routes.value[agent] else { return false }
        let control = Control(
            epoch: controlEpoch.withLock {
                $0 &+= 1
                return $0
            },
            maxWidthIndex: UInt8(clamping: maxWidthIndex), maxBits: UInt8(clamping: min(max(maxBits, 1), 8)),
            maxRateHz: maxRateHz.isFinite ? max(0, maxRateHz) : 0, reason: reason)
        endpoint.send(to: route, length: control.encodedLength) { control.encode(into: $0) }
        return true
    }

    private func reject(_ error: WireError, route: RoutingID, session: Session, peerName: String?) {
        let who = session.hello?.agentID ?? peerName ?? "route-\(route)"
        statsByRoute.withLock { s in
            s[route, default: AgentStats()].rejected[error.reason, default: 0] += 1
            if s[route]!.keyName == nil { s[route]!.keyName = peerName }
        }
        rejectLog.warning(
            key: "\(who):\(error.reason.rawValue)", "rejected message",
            metadata: ["agent": "\(who)", "reason": "\(error.reason.rawValue)", "detail": "\(error.detail)"])
    }
}
