import Synchronization

/// A `ServerTransport` in memory, for tests of the server's logic that are driven by events
/// rather than by the clock: every `InMemoryPeer.send` is an event on `events`, in order, and
/// every message to a peer waits in that peer's queue until the peer `receive`s it.
///
/// Each peer's queue holds `sendHWM` messages (ZeroMQ's per-agent queue); beyond that the router
/// applies the same delivery rules as `RouterEndpoint` (`RoutedOutbox`): reliable messages are
/// held and go out, in order, as the peer reads; best-effort ones are dropped and counted. A
/// test makes a slow reader by not calling `receive`.
public final class InMemoryRouter: ServerTransport {
    fileprivate struct State {
        /// Messages each connected peer has not read yet (at most `capacity`).
        var queues: [RoutingID: [[UInt8]]] = [:]
        /// A peer's `receive` waiting for its next message.
        var waiting: [RoutingID: CheckedContinuation<[UInt8]?, Never>] = [:]
        var routed = RoutedOutbox<[UInt8]>()
        var counters = TransportCounters()
        var closed = false
        var nextPeer = 0
    }

    fileprivate let state = Mutex(State())
    private let capacity: Int
    private let continuation: AsyncStream<TransportEvent>.Continuation
    public let events: AsyncStream<TransportEvent>

    public init(sendHWM: Int = 64) {
        capacity = max(1, sendHWM)
        (events, continuation) = AsyncStream.makeStream(of: TransportEvent.self)
    }

    /// A new connection; `name` is what an authenticating transport would report as the peer's
    /// key name (`ReceivedMessage.peerName`), `greeting` what it sends first (an agent's Hello,
    /// as `DealerEndpoint` does on every connection).
    public func connect(name: String? = nil, greeting: [UInt8]? = nil) -> InMemoryPeer {
        let id = state.withLock { s -> RoutingID in
            s.nextPeer += 1
            let id = RoutingID(Array("peer-\(s.nextPeer)".utf8))
            s.queues[id] = []
            return id
        }
        let peer = InMemoryPeer(router: self, routingID: id, name: name)
        if let greeting { peer.send(greeting) }
        return peer
    }

    public func send(
        to routingID: RoutingID, length: Int, delivery: Delivery, _ write: (UnsafeMutableRawBufferPointer) -> Void
    ) {
        var bytes = [UInt8](repeating: 0, count: length)
        bytes.withUnsafeMutableBytes { write($0) }
        state.withLock { s in flush(&s, [Routed(routingID: routingID, message: bytes, delivery: delivery)]) }
    }

    public func reliableBacklog(of routingID: RoutingID) -> Int { state.withLock { $0.routed.backlog(of: routingID) } }
    public var counters: TransportCounters { state.withLock { $0.counters } }
    public var unauthenticated: [String: Int] { [:] }

    /// Ends `events`. What peers have not read stays readable; then they receive nil.
    public func close() {
        state.withLock { s in
            s.closed = true
            s.routed.removeAll()
            for (_, w) in s.waiting { w.resume(returning: nil) }
            s.waiting.removeAll()
        }
        continuation.finish()
    }

    /// In memory nothing is in flight: the same as `close`.
    public func drainAndClose(drainMs: Int32) { close() }

    /// Under the lock: hands `outbox` (and what is held) to the peers' queues.
    fileprivate func flush(_ s: inout State, _ outbox: [Routed<[UInt8]>] = []) {
        guard !s.closed else { return }
        let capacity = capacity
        var routed = s.routed  // the closure below reads the rest of the state
        let outcome = routed.flush(outbox) { r in
            if let w = s.waiting.removeValue(forKey: r.routingID) {
                w.resume(returning: r.message)
                return .sent
            }
            guard var q = s.queues[r.routingID] else { return .gone }
            guard q.count < capacity else { return .full }
            q.append(r.message)
            s.queues[r.routingID] = q
            return .sent
        }
        s.routed = routed
        s.counters.record(outcome)
    }

    fileprivate func deliver(_ bytes: [UInt8], from peer: InMemoryPeer) {
        let closed = state.withLock { s in
            if !s.closed { s.counters.received += 1 }
            return s.closed
        }
        guard !closed else { return }
        continuation.yield(
            .message(
                ReceivedMessage(
                    routingID: peer.routingID, message: InMemoryBytes(bytes), receivedAtNs: SystemClock.monotonicNs(),
                    peerName: peer.name)))
    }
}

/// One connection to an `InMemoryRouter`: what an agent's socket would be. A test reads the
/// server's messages with `receive()`, or hands the peer to a `FeatureAgent` as its
/// `ClientTransport`, which reads them from `events` (use one or the other).
public final class InMemoryPeer: ClientTransport {
    private let router: InMemoryRouter
    public let routingID: RoutingID
    public let name: String?
    private let stream = Mutex<AsyncStream<TransportEvent>?>(nil)
    private let sent = Mutex(0)

    fileprivate init(router: InMemoryRouter, routingID: RoutingID, name: String?) {
        self.router = router
        self.routingID = routingID
        self.name = name
    }

    /// Sends one message to the server (an event on the router's `events`).
    public func send(_ bytes: [UInt8]) {
        router.deliver(bytes, from: self)
        sent.withLock { $0 += 1 }
    }

    /// In memory a frame is delivered at once: it is copied out, its buffer goes back to the
    /// pool, and nothing is ever replaced.
    @discardableResult
    public func submitFrame(_ buffer: SendBuffer, length: Int) -> Bool {
        let bytes = [UInt8](UnsafeRawBufferPointer(rebasing: buffer.bytes[0..<length]))
        buffer.release()
        send(bytes)
        return false
    }

    /// The server's messages as events, for a `FeatureAgent`. The connection exists from
    /// `connect` on and never drops, so there is no `.connected` or `.disconnected` event.
    public var events: AsyncStream<TransportEvent> {
        stream.withLock { s in
            if let s { return s }
            let (events, continuation) = AsyncStream.makeStream(of: TransportEvent.self)
            let me = self
            Task {
                while let m = await me.receive() {
                    continuation.yield(
                        .message(
                            ReceivedMessage(
                                routingID: .none, message: InMemoryBytes(m), receivedAtNs: SystemClock.monotonicNs(),
                                peerName: nil)))
                }
                continuation.finish()
            }
            s = events
            return events
        }
    }

    public var counters: TransportCounters {
        var c = TransportCounters()
        c.sent = sent.withLock { $0 }
        return c
    }

    public var endpoint: String { "inmemory://\(String(decoding: routingID.bytes, as: UTF8.self))" }

    public func close() { disconnect() }

    /// The next message from the server, waiting for it; nil once the router is closed and the
    /// peer has read everything, or after `disconnect`. Reading makes room: held messages follow.
    public func receive() async -> [UInt8]? {
        await withCheckedContinuation { (c: CheckedContinuation<[UInt8]?, Never>) in
            router.state.withLock { s in
                if var q = s.queues[routingID], !q.isEmpty {
                    let m = q.removeFirst()
                    s.queues[routingID] = q
                    router.flush(&s)
                    c.resume(returning: m)
                } else if s.closed || s.queues[routingID] == nil {
                    c.resume(returning: nil)
                } else {
                    s.waiting[routingID] = c
                }
            }
        }
    }

    /// Closes this connection: what it had not read is gone, and messages to it are unroutable.
    public func disconnect() {
        router.state.withLock { s in
            s.queues[routingID] = nil
            s.waiting.removeValue(forKey: routingID)?.resume(returning: nil)
            router.flush(&s)
        }
    }
}

/// Received bytes owned by the message (in-memory transport); immutable once made.
final class InMemoryBytes: ReceivedBytes, @unchecked Sendable {
    private let storage: UnsafeMutableRawBufferPointer

    init(_ bytes: [UInt8]) {
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, bytes.count), alignment: 16)
        bytes.withUnsafeBytes { storage.copyMemory(from: $0) }
        self.storage = storage
        count = bytes.count
    }

    private let count: Int
    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: storage[0..<count]) }
    deinit { storage.deallocate() }
}
