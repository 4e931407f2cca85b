/// The transport's vocabulary, whatever carries the bytes: what a server receives (`TransportEvent`),
/// how hard it tries to deliver (`Delivery`), what it counts (`TransportCounters`), and the
/// server's end of a transport (`ServerTransport`). `RouterEndpoint` implements it over ZeroMQ
/// (the only code that touches libzmq's sockets); `InMemoryRouter` implements it in memory for
/// tests that are driven by events, not by the clock.

/// The server's end of a transport: agents' messages arrive on `events`, in arrival order; the
/// server sends to one agent by its routing id. Every method may be called from any thread.
public protocol ServerTransport: AnyObject, Sendable {
    var events: AsyncStream<TransportEvent> { get }
    /// Sends `length` bytes written by `write`. Never blocks. If the agent is gone the message is
    /// dropped and counted; if its queue is full, a `.reliable` message waits (in order, and is
    /// retried) and a `.bestEffort` one is dropped and counted.
    func send(
        to routingID: RoutingID, length: Int, delivery: Delivery, _ write: (UnsafeMutableRawBufferPointer) -> Void)
    /// Reliable messages waiting for room in an agent's queue.
    func reliableBacklog(of routingID: RoutingID) -> Int
    var counters: TransportCounters { get }
    /// Refused handshakes by client key (empty where the transport authenticates no one).
    var unauthenticated: [String: Int] { get }
    /// Closes, after handing over what is queued and waiting up to `drainMs` for it to leave.
    func drainAndClose(drainMs: Int32)
    /// Closes at once and finishes `events`. Idempotent.
    func close()
}

/// The agent's end of a transport: one connection to a server. The server's messages arrive on
/// `events`; small messages (Hello) go in order, frames through a newest-wins slot.
public protocol ClientTransport: AnyObject, Sendable {
    var events: AsyncStream<TransportEvent> { get }
    /// Queues a small message to be sent in order, ahead of frames.
    func send(_ bytes: [UInt8])
    /// Sends a frame written into `buffer` (given back to its pool once sent); a frame still
    /// waiting when a newer one comes is replaced and counted (`framesReplaced`). Returns true if
    /// it replaced one.
    @discardableResult func submitFrame(_ buffer: SendBuffer, length: Int) -> Bool
    var counters: TransportCounters { get }
    /// Where it connects (for logs and summaries).
    var endpoint: String { get }
    /// Closes the connection and finishes `events`. Idempotent.
    func close()
}

extension ServerTransport {
    /// Sends a reliable message (an Ack, a Control, a Handover).
    public func send(to routingID: RoutingID, length: Int, _ write: (UnsafeMutableRawBufferPointer) -> Void) {
        send(to: routingID, length: length, delivery: .reliable, write)
    }
}

/// What a transport hands to its consumer.
public enum TransportEvent: Sendable {
    /// A complete single-part message; on the server with the sender's routing id.
    case message(ReceivedMessage)
    /// A connection completed its handshake (the agent then sends Hello).
    case connected
    /// A connection was lost (ZeroMQ reconnects by itself).
    case disconnected
}

/// Bytes a transport received, read in place (never copied) while the value is alive.
public protocol ReceivedBytes: AnyObject, Sendable {
    var bytes: UnsafeRawBufferPointer { get }
}

public struct ReceivedMessage: Sendable {
    /// The sender's routing id (server side only).
    public let routingID: RoutingID
    public let message: any ReceivedBytes
    /// Monotonic clock at receipt, for queue-delay measurement.
    public let receivedAtNs: UInt64
    /// The authenticated peer's name from the allow-list (ZAP "User-Id"), if Curve is on.
    public let peerName: String?
    /// Parts beyond the first (the protocol uses single-part messages; extra parts were
    /// read and discarded, and the receiver rejects the message).
    public let extraParts: Int

    public init(
        routingID: RoutingID, message: any ReceivedBytes, receivedAtNs: UInt64, peerName: String?, extraParts: Int = 0
    ) {
        self.routingID = routingID
        self.message = message
        self.receivedAtNs = receivedAtNs
        self.peerName = peerName
        self.extraParts = extraParts
    }
}

/// How hard a router tries to deliver a message when the agent's queue (`send_hwm`) is full.
public enum Delivery: Sendable {
    /// Held, in order, and retried until the agent's queue has room: Acks, Controls and
    /// Handovers, which the protocol promises for every accepted message. Dropped (and counted)
    /// only when the agent is gone.
    case reliable
    /// Dropped and counted when the agent's queue is full or while its reliable messages wait:
    /// Results, which the next fusion pass replaces.
    case bestEffort
}

/// A ZeroMQ routing id (the server's handle for one connected agent).
public struct RoutingID: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public static let none = RoutingID([])
    public var description: String { bytes.map { String($0, radix: 16) }.joined() }
}

/// Counters kept by a socket thread.
public struct TransportCounters: Sendable, Equatable {
    public var received = 0
    public var sent = 0
    /// Inbound messages dropped because the consumer fell `inboundCapacity` behind.
    public var inboundDropped = 0
    /// Outbound messages dropped: peer gone (`EHOSTUNREACH`) or its queue full.
    public var unroutable = 0
    public var sendQueueFull = 0
    /// Agent only: frames replaced by a newer one before they reached the socket.
    public var framesReplaced = 0
    /// Extra parts of multi-part messages (the protocol uses single-part messages only).
    public var multipartDiscarded = 0
    /// Router only: outbound messages dropped, per destination and reason ("send_queue_full":
    /// a best-effort message while the peer's queue was at send_hwm; "unroutable": the peer was
    /// gone). Reliable messages are never dropped for a full queue: they wait (`reliableBacklog`).
    public var droppedByRoute: [RoutingID: [String: Int]] = [:]
    /// Router only: reliable messages waiting for room in each peer's queue (peers with none
    /// are absent).
    public var reliableBacklog: [RoutingID: Int] = [:]
    /// Router only: failed Curve handshakes by kind ("no_detail": e.g. a plain client to a Curve
    /// server, "protocol": e.g. a wrong server key, "auth": the ZAP handler refused the key).
    public var handshakeFailures: [String: Int] = [:]
    /// Router only: connections closed after a successful handshake (the peer left, its
    /// heartbeat timed out, or libzmq dropped it for a message over `maxMessageBytes`: libzmq
    /// reports all three as one disconnect event).
    public var sessionsLost = 0
}
