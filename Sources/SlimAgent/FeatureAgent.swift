import Logging
import SlimTransport
import SlimWire

/// An agent's own view of its link: what it sent, what the server acknowledged, and how long
/// acknowledgements took.
public struct AgentLinkStats: Sendable, Equatable {
    public var framesSubmitted = 0
    /// Frames replaced in the newest-wins slot before they were sent (link slower than sensor).
    public var framesReplaced = 0
    /// Frames dropped because every send buffer was still in libzmq's hands.
    public var framesNoBuffer = 0
    /// Frames not sent because the server's Control caps the rate (`max_rate_hz`).
    public var framesRateCapped = 0
    public var acks = 0
    public var bytesSubmitted = 0
    public var bytesAcked = 0
    public var controlEpoch: UInt32 = 0
    public var control: Control?
    /// Results taken (from the agent's home server; a link that is not home counts them as ignored).
    public var results = 0
    public var resultsIgnored = 0
    /// When the first and the last Result arrived on this link (monotonic ns; 0: none yet).
    public var firstResultAtNs: UInt64 = 0
    public var lastResultAtNs: UInt64 = 0
    /// The same for the Results taken (while this link was the agent's home).
    public var firstTakenResultAtNs: UInt64 = 0
    public var lastTakenResultAtNs: UInt64 = 0
    /// When the first Ack arrived on this link (monotonic ns; 0: none yet), and the first since
    /// ``FeatureAgent/watchAcks(since:)`` (when the link became the agent's home).
    public var firstAckAtNs: UInt64 = 0
    public var firstAckSinceWatchNs: UInt64 = 0
    var ackWatchSinceNs: UInt64?
    /// Handover messages received, and those refused as not from the agent's home.
    public var handovers = 0
    public var connects = 0
    /// Seconds the last frame took to pack, compress and seal (CRC).
    public var lastPackSeconds = 0.0
    /// Round-trip times (submit → Ack) of the last `rttWindow` acknowledged frames, in ns.
    public var rttNs: [UInt64] = []

    public init() {}

    public func rttPercentileMs(_ p: Double) -> Double? {
        guard !rttNs.isEmpty else { return nil }
        let s = rttNs.sorted()
        let i = min(s.count - 1, max(0, Int((p / 100 * Double(s.count)).rounded(.up)) - 1))
        return Double(s[i]) / 1e6
    }
}

/// The agent's protocol identity and capabilities, announced in its Hello.
public struct AgentIdentity: Sendable {
    public var agentID: String
    public var modelID: String
    public var modelHash: [UInt8]
    public var widths: [UInt16]
    public var bitsMask: UInt8

    public init(
        agentID: String, modelID: String, modelHash: [UInt8] = .init(repeating: 0, count: 32),
        widths: [UInt16] = [250, 500, 750, 1000], bitsMask: UInt8 = 0xFF
    ) {
        self.agentID = agentID
        self.modelID = modelID
        self.modelHash = modelHash
        self.widths = widths
        self.bitsMask = bitsMask
    }

    public var hello: Hello {
        Hello(
            agentID: agentID, modelID: modelID, modelHash: modelHash, sensorKind: .lidar, widths: widths,
            bitsMask: bitsMask)
    }
}

/// Sequence numbers shared by every link of one agent: a frame keeps its number on every
/// server it goes to, and numbering carries over when the agent moves to another server.
public final class FrameSequence: Sendable {
    private let value = Locked<UInt64>(0)
    public init() {}
    public func next() -> UInt64 {
        value.withLock {
            $0 += 1
            return $0
        }
    }
    public var last: UInt64 { value.value }
}

/// What became of each frame an agent handed to a socket, whichever server it went to: a
/// frame is *lost* when no server acknowledged it. A ring of the last `capacity` sequence
/// numbers (no allocation per frame); a frame pushed out of it unacknowledged counts as lost.
public final class FrameLedger: Sendable {
    public struct Counts: Sendable, Equatable {
        /// Distinct frames handed to a socket, and distinct frames acknowledged by some server.
        public var sent = 0
        public var acked = 0
        /// Acks for a frame another server (or an earlier send) had already acknowledged.
        public var duplicateAcks = 0
        /// Frames handed to a socket more than once (mirrored to a second server, or resent).
        public var resent = 0
    }
    private struct Slot { var sequence: UInt64 = 0, acked = false }
    private struct State {
        var slots: [Slot]
        var counts = Counts()
        var evictedUnacked = 0
    }
    private let state: Locked<State>

    public init(capacity: Int = 8192) { state = Locked(State(slots: .init(repeating: Slot(), count: capacity))) }

    func sent(_ sequence: UInt64) {
        state.withLock { s in
            let i = Int(sequence % UInt64(s.slots.count))
            if s.slots[i].sequence == sequence {
                s.counts.resent += 1
                return
            }
            if s.slots[i].sequence != 0, !s.slots[i].acked { s.evictedUnacked += 1 }
            s.slots[i] = Slot(sequence: sequence, acked: false)
            s.counts.sent += 1
        }
    }

    func acked(_ sequence: UInt64) {
        state.withLock { s in
            let i = Int(sequence % UInt64(s.slots.count))
            guard s.slots[i].sequence == sequence, !s.slots[i].acked else {
                s.counts.duplicateAcks += 1
                return
            }
            s.slots[i].acked = true
            s.counts.acked += 1
        }
    }

    public var counts: Counts { state.value.counts }

    /// Frames handed to a socket that no server acknowledged (so far).
    public var unacked: Int {
        state.withLock { s in s.evictedUnacked + s.slots.count { $0.sequence != 0 && !$0.acked } }
    }
}

/// The sending side of an edge agent: says Hello on every (re)connection, encodes frames into
/// pooled buffers and hands them to the socket without copying, one frame on the link at a time
/// (the newest waits for the previous one's Ack; an older waiting frame is replaced and counted),
/// and keeps RTT and goodput bookkeeping from Acks.
///
/// `submit` is called from the agent's pipeline (one thread at a time); `run()` consumes the
/// socket's events on its own task.
public final class FeatureAgent: Sendable {
    public let identity: AgentIdentity
    public let endpoint: any ClientTransport
    private let pool: SendBufferPool
    private let encoder = Locked(EncoderBox())
    private let state = Locked(State())
    private let logger: Logger
    static let rttWindow = 1024
    public let sequence: FrameSequence
    public let ledger: FrameLedger
    private let handoverHandler = Locked<(@Sendable (Handover) -> Void)?>(nil)
    private let takesResults = Locked(true)

    private struct State {
        var stats = AgentLinkStats()
        var sequence: UInt64 = 0
        /// Hand-over times (frame to socket) by sequence, for RTT (bounded ring).
        var sentAt: [UInt64] = .init(repeating: 0, count: 4096)
        var sentSeq: [UInt64] = .init(repeating: 0, count: 4096)
        var rttNext = 0
        /// The frame on the link (sent, not yet acknowledged) and when it was handed over.
        var inFlight: UInt64?
        var inFlightAt: UInt64 = 0
        /// The newest frame waiting for the link, encoded, not yet handed to the socket.
        var held: Held?
        var heldReplaced = 0
        /// A copy of the frame on the link, for resending it to another server if this one
        /// goes silent before acknowledging it: kept only once there is another server to go to
        /// (``FeatureAgent/retainsFrames``), with its capacity reserved then (no allocation per frame).
        var retains = false
        var retained: [UInt8] = []
        var retainedSeq: UInt64 = 0
        /// When the last frame was accepted for sending (for Control's `max_rate_hz`).
        var lastAcceptedAt: UInt64?

        /// Records the hand-over time of a frame (RTTs count from it) and marks it in flight.
        mutating func markSent(_ sequence: UInt64, at now: UInt64) {
            let slot = Int(sequence % UInt64(sentAt.count))
            sentAt[slot] = now
            sentSeq[slot] = sequence
            inFlight = sequence
            inFlightAt = now
        }
    }

    private struct Held {
        var buffer: SendBuffer
        var length: Int
        var sequence: UInt64
    }

    /// A frame unacknowledged for this long no longer holds the link (its Ack was lost, or the
    /// server restarted): the next frame goes anyway.
    public static let inFlightTimeoutNs: UInt64 = 1_000_000_000

    private final class EncoderBox: @unchecked Sendable { let encoder = FeatureFrameEncoder() }

    /// Called (on the agent's receiving task) for every Result the server sends.
    public typealias ResultHandler = @Sendable (ResultMessage) -> Void
    private let onResult: ResultHandler?
    /// Goodput and queueing estimate from Acks (read by the adaptation controller).
    private let estimator = Locked(GoodputEstimator())
    public var goodput: GoodputEstimator.Snapshot { estimator.withLock { $0.snapshot } }

    /// Connects to the server (in the background; libzmq reconnects with back-off).
    /// - Parameter maxFrameBytes: size of each send buffer; frames that do not fit are a
    ///   programming error.
    public convenience init(
        identity: AgentIdentity, server: String, curve: CurveClient?, options: SocketOptions = SocketOptions(),
        maxFrameBytes: Int, buffers: Int = 4, logger: Logger, onResult: ResultHandler? = nil,
        sequence: FrameSequence = FrameSequence(), ledger: FrameLedger = FrameLedger()
    ) throws(ZMQError) {
        self.init(
            identity: identity,
            transport: try DealerEndpoint(
                connect: server, curve: curve, options: options, greeting: identity.hello.encoded()),
            maxFrameBytes: maxFrameBytes, buffers: buffers, logger: logger, onResult: onResult, sequence: sequence,
            ledger: ledger)
    }

    /// An agent over a given transport (an in-memory one in tests). The transport sends the
    /// agent's Hello first on every connection.
    public init(
        identity: AgentIdentity, transport: any ClientTransport, maxFrameBytes: Int, buffers: Int = 4, logger: Logger,
        onResult: ResultHandler? = nil, sequence: FrameSequence = FrameSequence(), ledger: FrameLedger = FrameLedger()
    ) {
        self.identity = identity
        self.onResult = onResult
        self.sequence = sequence
        self.ledger = ledger
        endpoint = transport
        self.logger = logger
        pool = SendBufferPool(count: buffers, bufferSize: maxFrameBytes)
        state.withLock { $0.stats.rttNs.reserveCapacity(Self.rttWindow) }
    }

    /// Whether a copy of the unacknowledged frame is kept for a failover (off until the agent has
    /// a standby or a mirror to fail over to: a lone agent copies nothing).
    public var retainsFrames: Bool {
        get { state.value.retains }
        set {
            let capacity = pool.bufferSize
            state.withLock { s in
                s.retains = newValue
                if newValue { s.retained.reserveCapacity(capacity) }
            }
        }
    }

    /// Called (on the receiving task) for every Handover this link's server sends.
    public func onHandover(_ handler: @escaping @Sendable (Handover) -> Void) {
        handoverHandler.withLock { $0 = handler }
    }

    /// Whether Results from this link reach `onResult` (true for the agent's home server only).
    public var acceptsResults: Bool {
        get { takesResults.value }
        set { takesResults.withLock { $0 = newValue } }
    }

    /// Notes the time of the next Ack at or after `since` (in `stats.firstAckSinceWatchNs`).
    public func watchAcks(since: UInt64) {
        state.withLock { s in
            s.stats.ackWatchSinceNs = since
            s.stats.firstAckSinceWatchNs = 0
        }
    }

    /// The goodput estimate, to carry over to another link.
    public var estimatorState: GoodputEstimator { estimator.value }
    public func adopt(estimator e: GoodputEstimator) { estimator.withLock { $0 = e } }

    /// How long the frame on the link has waited for its Ack (nil: none waiting).
    public func inFlightAge(now: UInt64) -> UInt64? {
        state.withLock { s in s.inFlight.map { _ in now &- s.inFlightAt } }
    }

    /// A copy of the frame on this link that its server has not acknowledged yet, if any (for a
    /// failover: it is resent to the next server with ``submitEncoded(_:sequence:)``).
    public var unackedFrame: (bytes: [UInt8], sequence: UInt64)? {
        state.withLock { s in
            guard s.inFlight != nil, s.retainedSeq == s.inFlight, !s.retained.isEmpty else { return nil }
            return (s.retained, s.retainedSeq)
        }
    }

    public var stats: AgentLinkStats {
        var s = state.value.stats
        s.framesReplaced = endpoint.counters.framesReplaced + state.value.heldReplaced
        return s
    }

    /// The sequence number of the last frame `submit` sent (0 before the first).
    public var lastSequence: UInt64 { state.value.sequence }

    /// Submits a frame another link of this agent already encoded (mirroring during a handover,
    /// or a resend on failover): copied into this link's own buffer, then the same one-on-the-link
    /// rule as `submit`, unless `resend`: a frame another server never acknowledged goes to the
    /// socket at once and is never replaced by a newer one. False when no buffer was free.
    @discardableResult
    public func submitEncoded(_ bytes: UnsafeRawBufferPointer, sequence: UInt64, resend: Bool = false) -> Bool {
        guard bytes.count <= pool.bufferSize, let buffer = pool.take() else {
            state.withLock { $0.stats.framesNoBuffer += 1 }
            return false
        }
        buffer.bytes.copyMemory(from: bytes)
        state.withLock { s in
            s.sequence = max(s.sequence, sequence)
            s.stats.framesSubmitted += 1
            s.stats.bytesSubmitted += bytes.count
        }
        enqueue(buffer, length: bytes.count, sequence: sequence, now: SystemClock.monotonicNs(), force: resend)
        return true
    }

    /// The caps of the server's latest Control, if any.
    public var control: Control? { state.value.stats.control }

    /// True, and counted, when Control's `max_rate_hz` leaves no room for a frame now: a caller
    /// asks before it featurizes and encodes, so that a capped frame costs nothing. (`submit`
    /// keeps the cap either way.)
    public func rateCapped() -> Bool {
        state.withLock { s in
            guard Self.capped(s, SystemClock.monotonicNs()) else { return false }
            s.stats.framesRateCapped += 1
            return true
        }
    }

    private static func capped(_ s: State, _ now: UInt64) -> Bool {
        guard let rate = s.stats.control?.maxRateHz, rate > 0, let last = s.lastAcceptedAt else { return false }
        return Double(now &- last) < 1e9 / Double(rate)
    }

    /// Encodes and submits one frame. `header.sequence` and `agentID` are filled in here; the
    /// encoded bytes also go to each of `mirrors` (the agent's other servers during a handover).
    /// - Returns: the encoded length, or nil when no send buffer was free (the frame is
    ///   dropped and counted).
    @discardableResult
    public func submit(
        _ header: FeatureFrameHeader, dense: UnsafeBufferPointer<UInt8>, mask: UnsafeRawBufferPointer?,
        mirrors: [FeatureAgent] = []
    ) -> Int? {
        submitEncoding(mirrors: mirrors) { sequence, bytes in
            var h = header
            h.agentID = identity.agentID
            h.sequence = sequence
            return encoder.withLock { $0.encoder.encode(h, dense: dense, mask: mask, into: bytes).length }
        }
    }

    /// Submits the agent's own detections (the boxes rung, PROTOCOL.md §4.7) under the same rules
    /// as a frame: numbered in the same sequence, one on the link at a time, mirrored, rate-capped.
    /// `boxes.sequence` and `agentID` are filled in here.
    @discardableResult
    public func submit(boxes: Boxes, mirrors: [FeatureAgent] = []) -> Int? {
        var b = boxes
        b.agentID = identity.agentID
        if b.detections.count > 4096 { b.detections.removeLast(b.detections.count - 4096) }
        guard b.encodedLength <= pool.bufferSize else {
            // The send buffers are sized for a feature map, which is far larger than 4096 boxes.
            preconditionFailure("a Boxes message of \(b.encodedLength) bytes does not fit a send buffer")
        }
        return submitEncoding(mirrors: mirrors) { sequence, bytes in
            b.sequence = sequence
            return b.encode(into: bytes)
        }
    }

    /// The common path of every numbered message: the rate cap, a pooled buffer, the next
    /// sequence number, `encode` (into the buffer; returns the length), mirrors, the link.
    private func submitEncoding(
        mirrors: [FeatureAgent], _ encode: (_ sequence: UInt64, _ into: UnsafeMutableRawBufferPointer) -> Int
    ) -> Int? {
        // The server's Control caps the rate (PROTOCOL.md §4.5): a frame sooner than 1/max_rate_hz
        // after the last one accepted is not sent, and counted.
        let capped = state.withLock { s -> Bool in
            let now = SystemClock.monotonicNs()
            if Self.capped(s, now) {
                s.stats.framesRateCapped += 1
                return true
            }
            s.lastAcceptedAt = now
            return false
        }
        if capped { return nil }
        guard let buffer = pool.take() else {
            state.withLock { $0.stats.framesNoBuffer += 1 }
            return nil
        }
        let seq = sequence.next()
        let t0 = SystemClock.monotonicNs()
        let length = encode(seq, buffer.bytes)
        let now = SystemClock.monotonicNs()
        state.withLock { s in
            s.sequence = seq
            s.stats.lastPackSeconds = Double(now - t0) / 1e9
            s.stats.framesSubmitted += 1
            s.stats.bytesSubmitted += length
        }
        for m in mirrors {
            m.submitEncoded(UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length]), sequence: seq)
        }
        enqueue(buffer, length: length, sequence: seq, now: now)
        return length
    }

    /// One frame on the link at a time: while one is unacknowledged, the newest frame waits
    /// here and replaces an older waiting one, so a link that slows down never queues stale
    /// frames in socket buffers (they would all miss their deadline).
    private func enqueue(_ buffer: SendBuffer, length: Int, sequence: UInt64, now: UInt64, force: Bool = false) {
        let (sendNow, dropped): (Bool, SendBuffer?) = state.withLock { s in
            if force {
                s.markSent(sequence, at: now)
                Self.retain(&s, buffer, length, sequence)
                return (true, nil)
            }
            let old = s.held?.buffer  // older than this frame either way: never sent after it
            if old != nil { s.heldReplaced += 1 }
            s.held = nil
            if s.inFlight == nil || now &- s.inFlightAt > Self.inFlightTimeoutNs {
                s.markSent(sequence, at: now)
                Self.retain(&s, buffer, length, sequence)
                return (true, old)
            }
            s.held = Held(buffer: buffer, length: length, sequence: sequence)
            return (false, old)
        }
        dropped?.release()
        if sendNow { handOver(buffer, length: length, sequence: sequence) }
    }

    private static func retain(_ s: inout State, _ buffer: SendBuffer, _ length: Int, _ sequence: UInt64) {
        guard s.retains else { return }
        s.retained.removeAll(keepingCapacity: true)
        s.retained.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length]))
        s.retainedSeq = sequence
    }

    private func handOver(_ buffer: SendBuffer, length: Int, sequence: UInt64) {
        ledger.sent(sequence)
        endpoint.submitFrame(buffer, length: length)
    }

    /// The link is free again (an Ack, or a new connection): send the waiting frame, if any.
    private func linkFree(acked sequence: UInt64?) {
        let now = SystemClock.monotonicNs()
        let next: Held? = state.withLock { s in
            if let sequence, let f = s.inFlight, sequence < f { return nil }  // an older frame's Ack
            s.inFlight = nil
            guard let h = s.held else { return nil }
            s.held = nil
            s.markSent(h.sequence, at: now)
            Self.retain(&s, h.buffer, h.length, h.sequence)
            return h
        }
        if let next { handOver(next.buffer, length: next.length, sequence: next.sequence) }
    }

    /// Consumes the server's messages until the endpoint closes.
    public func run() async {
        for await event in endpoint.events {
            switch event {
            case .connected:
                state.withLock { $0.stats.connects += 1 }
                linkFree(acked: nil)  // whatever was in flight died with the old connection
                logger.debug("connected", metadata: ["endpoint": "\(endpoint.endpoint)"])
            case .disconnected:
                logger.info("disconnected; reconnecting", metadata: ["endpoint": "\(endpoint.endpoint)"])
            case .message(let m):
                handle(m)
            }
        }
    }

    private func handle(_ m: ReceivedMessage) {
        let now = SystemClock.monotonicNs()
        do throws(WireError) {
            switch try Message.decode(m.message.bytes) {
            case .ack(let ack):
                ledger.acked(ack.sequence)
                state.withLock { s in
                    if s.stats.firstAckAtNs == 0 { s.stats.firstAckAtNs = now }
                    if let t = s.stats.ackWatchSinceNs, now >= t {
                        s.stats.firstAckSinceWatchNs = now
                        s.stats.ackWatchSinceNs = nil
                    }
                    s.stats.acks += 1
                    s.stats.bytesAcked += Int(ack.bytesReceived)
                    let slot = Int(ack.sequence % UInt64(s.sentAt.count))
                    if s.sentSeq[slot] == ack.sequence {
                        let rtt = now &- s.sentAt[slot]
                        estimator.withLock { $0.add(bytes: Int(ack.bytesReceived), rttNs: rtt) }
                        if s.stats.rttNs.count < Self.rttWindow {
                            s.stats.rttNs.append(rtt)
                        } else {
                            s.stats.rttNs[s.rttNext] = rtt
                        }
                        s.rttNext = (s.rttNext + 1) % Self.rttWindow
                    }
                }
                linkFree(acked: ack.sequence)
            case .control(let c):
                state.withLock { s in
                    if c.epoch > s.stats.controlEpoch || c.reason == 0 {
                        s.stats.controlEpoch = c.epoch
                        s.stats.control = c
                    }
                }
            case .result(let r):
                let take = takesResults.value
                state.withLock { s in
                    if s.stats.firstResultAtNs == 0 { s.stats.firstResultAtNs = now }
                    s.stats.lastResultAtNs = now
                    if take {
                        s.stats.results += 1
                        if s.stats.firstTakenResultAtNs == 0 { s.stats.firstTakenResultAtNs = now }
                        s.stats.lastTakenResultAtNs = now
                    } else {
                        s.stats.resultsIgnored += 1
                    }
                }
                if take { onResult?(r) }
            case .handover(let h):
                state.withLock { $0.stats.handovers += 1 }
                handoverHandler.value?(h)
            case .hello, .featureFrame, .boxes:
                throw WireError(.unexpectedKind, "servers do not send Hello, FeatureFrame or Boxes")
            }
        } catch {
            logger.warning(
                "rejected message from server",
                metadata: ["reason": "\(error.reason.rawValue)", "detail": "\(error.detail)"])
        }
    }
}
