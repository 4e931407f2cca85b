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
    public var results = 0
    public var connects = 0
    /// Seconds the last frame took to pack, compress and seal (CRC).
    public var lastPackSeconds = 0.0
    /// Round-trip times (submit → Ack) of the last `rttWindow` acknowledged frames, in ns.
    public var rttNs: [UInt64] = []

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

/// The sending side of an edge agent: says Hello on every (re)connection, encodes frames into
/// pooled buffers and hands them to the socket without copying, one frame on the link at a time
/// (the newest waits for the previous one's Ack; an older waiting frame is replaced and counted),
/// and keeps RTT and goodput bookkeeping from Acks.
///
/// `submit` is called from the agent's pipeline (one thread at a time); `run()` consumes the
/// socket's events on its own task.
public final class FeatureAgent: Sendable {
    public let identity: AgentIdentity
    public let endpoint: DealerEndpoint
    private let pool: SendBufferPool
    private let encoder = Locked(EncoderBox())
    private let state = Locked(State())
    private let logger: Logger
    static let rttWindow = 1024

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
    public init(
        identity: AgentIdentity, server: String, curve: CurveClient?, options: SocketOptions = SocketOptions(),
        maxFrameBytes: Int, buffers: Int = 4, logger: Logger, onResult: ResultHandler? = nil
    ) throws(ZMQError) {
        self.identity = identity
        self.onResult = onResult
        endpoint = try DealerEndpoint(
            connect: server, curve: curve, options: options, greeting: identity.hello.encoded())
        self.logger = logger
        pool = SendBufferPool(count: buffers, bufferSize: maxFrameBytes)
        state.withLock { $0.stats.rttNs.reserveCapacity(Self.rttWindow) }
    }

    public var stats: AgentLinkStats {
        var s = state.value.stats
        s.framesReplaced = endpoint.counters.framesReplaced + state.value.heldReplaced
        return s
    }

    /// The sequence number of the last frame `submit` sent (0 before the first).
    public var lastSequence: UInt64 { state.value.sequence }

    /// The caps of the server's latest Control, if any.
    public var control: Control? { state.value.stats.control }

    /// Encodes and submits one frame. `header.sequence` and `agentID` are filled in here.
    /// - Returns: the encoded length, or nil when no send buffer was free (the frame is
    ///   dropped and counted).
    @discardableResult
    /// True, and counted, when Control's `max_rate_hz` leaves no room for a frame now: a caller
    /// asks before it featurizes and encodes, so that a capped frame costs nothing. (`submit`
    /// keeps the cap either way.)
    public func rateCapped() -> Bool {
        state.withLock { s in
            guard Self.capped(s, Clock.monotonicNs()) else { return false }
            s.stats.framesRateCapped += 1
            return true
        }
    }

    private static func capped(_ s: State, _ now: UInt64) -> Bool {
        guard let rate = s.stats.control?.maxRateHz, rate > 0, let last = s.lastAcceptedAt else { return false }
        return Double(now &- last) < 1e9 / Double(rate)
    }

    public func submit(_ header: FeatureFrameHeader, dense: UnsafeBufferPointer<UInt8>, mask: UnsafeRawBufferPointer?)
        -> Int?
    {
        // The server's Control caps the rate (PROTOCOL.md §4.5): a frame sooner than 1/max_rate_hz
        // after the last one accepted is not sent, and counted.
        let capped = state.withLock { s -> Bool in
            let now = Clock.monotonicNs()
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
        var h = header
        h.agentID = identity.agentID
        h.sequence = state.withLock { s in
            s.sequence += 1
            return s.sequence
        }
        let t0 = Clock.monotonicNs()
        let length = encoder.withLock { $0.encoder.encode(h, dense: dense, mask: mask, into: buffer.bytes).length }
        let now = Clock.monotonicNs()
        // One frame on the link at a time: while one is unacknowledged, the newest frame waits
        // here and replaces an older waiting one, so a link that slows down never queues stale
        // frames in socket buffers (they would all miss their deadline).
        let (sendNow, dropped): (Bool, SendBuffer?) = state.withLock { s in
            s.stats.lastPackSeconds = Double(now - t0) / 1e9
            s.stats.framesSubmitted += 1
            s.stats.bytesSubmitted += length
            let old = s.held?.buffer  // older than this frame either way: never sent after it
            if old != nil { s.heldReplaced += 1 }
            s.held = nil
            if s.inFlight == nil || now &- s.inFlightAt > Self.inFlightTimeoutNs {
                s.markSent(h.sequence, at: now)
                return (true, old)
            }
            s.held = Held(buffer: buffer, length: length, sequence: h.sequence)
            return (false, old)
        }
        dropped?.release()
        if sendNow { endpoint.submitFrame(buffer, length: length) }
        return length
    }

    /// The link is free again (an Ack, or a new connection): send the waiting frame, if any.
    private func linkFree(acked sequence: UInt64?) {
        let now = Clock.monotonicNs()
        let next: Held? = state.withLock { s in
            if let sequence, let f = s.inFlight, sequence < f { return nil }  // an older frame's Ack
            s.inFlight = nil
            guard let h = s.held else { return nil }
            s.held = nil
            s.markSent(h.sequence, at: now)
            return h
        }
        if let next { endpoint.submitFrame(next.buffer, length: next.length) }
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
        let now = Clock.monotonicNs()
        do throws(WireError) {
            switch try Message.decode(m.message.bytes) {
            case .ack(let ack):
                state.withLock { s in
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
                state.withLock { $0.stats.results += 1 }
                onResult?(r)
            case .hello, .featureFrame:
                throw WireError(.unexpectedKind, "servers do not send Hello or FeatureFrame")
            }
        } catch {
            logger.warning(
                "rejected message from server",
                metadata: ["reason": "\(error.reason.rawValue)", "detail": "\(error.detail)"])
        }
    }
}
