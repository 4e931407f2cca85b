import CZeroMQ
import Logging
import Synchronization

/// Socket settings shared by both ends. Defaults suit a LAN or a cellular uplink.
public struct SocketOptions: Sendable, Equatable {
    /// ZMTP heartbeat interval; a peer silent for `heartbeatTimeoutMs` is dropped.
    public var heartbeatIntervalMs: Int32 = 1000
    public var heartbeatTimeoutMs: Int32 = 3000
    /// Reconnection back-off: starts at `reconnectMs`, doubles up to `reconnectMaxMs`.
    public var reconnectMs: Int32 = 100
    public var reconnectMaxMs: Int32 = 5000
    public var sendHWM: Int32 = 64
    public var receiveHWM: Int32 = 64
    /// Largest message accepted. libzmq drops a connection that announces a bigger one before
    /// allocating it; messages up to this size reach the protocol's own checks.
    public var maxMessageBytes: Int = 32 << 20
    /// Events buffered for the consumer before new ones are dropped and counted.
    public var inboundCapacity: Int = 1024
    /// A connection that has not finished its ZMTP/Curve handshake this long after connecting
    /// is closed (libzmq's default is 30 s): idle and half-open connections cannot pile up.
    public var handshakeTimeoutMs: Int32 = 5000
    /// Pending TCP connections the kernel queues for a listening socket (libzmq's default is
    /// 100, which a burst of connection attempts fills, delaying honest agents' connects).
    public var backlog: Int32 = 1024

    public init() {}
}

/// Curve settings of a server.
public struct CurveServer: Sendable {
    public var keyPair: CurveKeyPair
    public var allowList: CurveAllowList
    public init(keyPair: CurveKeyPair, allowList: CurveAllowList) {
        self.keyPair = keyPair
        self.allowList = allowList
    }
}

/// Curve settings of a client (agent).
public struct CurveClient: Sendable {
    public var keyPair: CurveKeyPair
    public var serverKey: CurveKey
    public init(keyPair: CurveKeyPair, serverKey: CurveKey) {
        self.keyPair = keyPair
        self.serverKey = serverKey
    }
}

private let monitorCounter = Atomic<Int>(0)

/// The server end: a ROUTER socket bound to an endpoint, on its own thread.
///
/// Received messages arrive on `events` in arrival order (libzmq fair-queues between agents).
/// `send` may be called from any thread.
public final class RouterEndpoint: ServerTransport {
    private let loop: SocketLoop
    private let zapRejections: Locked<[String: Int]>
    /// The bound endpoint, with the port resolved when bound to port 0.
    public let endpoint: String
    public var events: AsyncStream<TransportEvent> { loop.events }

    /// Binds. With `curve`, only clients whose keys are in its allow-list get through.
    public init(bind endpoint: String, curve: CurveServer?, options: SocketOptions = SocketOptions(), logger: Logger)
        throws(ZMQError)
    {
        let context = ZMQContext()
        let rejections = Locked<[String: Int]>([:])
        var zap: ZAPHandler?
        let socket = try ZMQSocket(context, type: ZMQ_ROUTER)
        try socket.set(ZMQ_LINGER, 0)
        try socket.set(ZMQ_ROUTER_MANDATORY, 1)
        try socket.set(ZMQ_ROUTER_HANDOVER, 1)  // a reconnecting agent with a fixed id takes over
        try Self.apply(options, to: socket)
        if let curve {
            zap = try ZAPHandler(
                context: context, allowList: curve.allowList, rejected: rejections,
                log: RateLimitedLog(logger: logger))
            try socket.set(ZMQ_CURVE_SERVER, 1)
            try socket.set(ZMQ_CURVE_SECRETKEY, bytes: curve.keyPair.secretKey.bytes)
            try socket.set(ZMQ_ZAP_DOMAIN, bytes: Array("slimsplit".utf8))
        }
        try socket.bind(endpoint)
        self.endpoint = socket.lastEndpoint
        zapRejections = rejections
        let monitor = "inproc://slimsplit-monitor-\(monitorCounter.add(1, ordering: .relaxed).newValue)"
        loop = try SocketLoop(
            socket: socket, isRouter: true, zap: zap, monitorEndpoint: monitor, inboundCapacity: options.inboundCapacity
        )
        loop.start(name: "slimsplit-router")
    }

    static func apply(_ o: SocketOptions, to s: ZMQSocket) throws(ZMQError) {
        try s.set(ZMQ_HEARTBEAT_IVL, o.heartbeatIntervalMs)
        try s.set(ZMQ_HEARTBEAT_TIMEOUT, o.heartbeatTimeoutMs)
        try s.set(ZMQ_HEARTBEAT_TTL, o.heartbeatTimeoutMs)
        try s.set(ZMQ_RECONNECT_IVL, o.reconnectMs)
        try s.set(ZMQ_RECONNECT_IVL_MAX, o.reconnectMaxMs)
        try s.set(ZMQ_SNDHWM, o.sendHWM)
        try s.set(ZMQ_RCVHWM, o.receiveHWM)
        try s.set(ZMQ_MAXMSGSIZE, int64: Int64(o.maxMessageBytes))
        try s.set(ZMQ_HANDSHAKE_IVL, o.handshakeTimeoutMs)
        try s.set(ZMQ_BACKLOG, o.backlog)
    }

    /// Sends `length` bytes written by `write` straight into libzmq's message buffer. Never
    /// blocks. If the agent is gone the message is dropped and counted; if its queue is full, a
    /// `.reliable` message waits (in order, retried) and a `.bestEffort` one is dropped and counted.
    public func send(
        to routingID: RoutingID, length: Int, delivery: Delivery,
        _ write: (UnsafeMutableRawBufferPointer) -> Void
    ) {
        let m = ZMQMessage(size: length)
        write(m.mutableBytes)
        loop.enqueue(m, to: routingID, delivery: delivery)
    }

    /// Reliable messages (Acks, Controls) waiting for room in an agent's queue: an agent that
    /// does not read them should not be sent more (`FeatureServer` refuses its frames).
    public func reliableBacklog(of routingID: RoutingID) -> Int { loop.reliableBacklog(of: routingID) }

    public var counters: TransportCounters { loop.counters }
    /// Refused Curve handshakes by client public key (Z85).
    public var unauthenticated: [String: Int] { zapRejections.withLock { $0 } }

    /// Closes the socket and finishes `events`. Idempotent.
    public func close() { loop.stop() }

    /// Closes the socket after handing libzmq what is queued to send (Acks, Results) and
    /// lingering up to `drainMs` for it to reach the agents: a graceful shutdown.
    public func drainAndClose(drainMs: Int32 = 1000) { loop.stop(drainMs: max(1, drainMs)) }
    deinit { loop.stop() }
}

/// The agent end: a DEALER socket connected to the server, on its own thread.
///
/// Frames go through a newest-wins slot: while the link is busy (or down), a newer frame
/// replaces the one waiting, and the replaced one is counted in `framesReplaced`. Control
/// messages (Hello) are queued in order and sent before frames.
public final class DealerEndpoint: ClientTransport {
    private let loop: SocketLoop
    public let endpoint: String
    public var events: AsyncStream<TransportEvent> { loop.events }

    /// Connects (in the background; libzmq retries with back-off).
    /// - Parameter greeting: sent first on every new connection, before any frame, and frames
    ///   wait for it: the agent's Hello, so that a restarted server hears it before the next frame.
    public init(
        connect endpoint: String, curve: CurveClient?, options: SocketOptions = SocketOptions(),
        greeting: [UInt8]? = nil, routingID: [UInt8]? = nil
    ) throws(ZMQError) {
        let context = ZMQContext()
        let socket = try ZMQSocket(context, type: ZMQ_DEALER)
        try socket.set(ZMQ_LINGER, 0)
        try socket.set(ZMQ_IMMEDIATE, 1)  // queue nothing while disconnected: the slot holds the newest frame
        var o = options
        o.sendHWM = min(options.sendHWM, 4)
        try RouterEndpoint.apply(o, to: socket)
        if let routingID { try socket.set(ZMQ_ROUTING_ID, bytes: routingID) }
        if let curve {
            try socket.set(ZMQ_CURVE_SERVERKEY, bytes: curve.serverKey.bytes)
            try socket.set(ZMQ_CURVE_PUBLICKEY, bytes: curve.keyPair.publicKey.bytes)
            try socket.set(ZMQ_CURVE_SECRETKEY, bytes: curve.keyPair.secretKey.bytes)
        }
        let monitor = "inproc://slimsplit-monitor-\(monitorCounter.add(1, ordering: .relaxed).newValue)"
        loop = try SocketLoop(
            socket: socket, isRouter: false, zap: nil, monitorEndpoint: monitor, greeting: greeting,
            inboundCapacity: options.inboundCapacity)
        try socket.connect(endpoint)
        self.endpoint = endpoint
        loop.start(name: "slimsplit-dealer")
    }

    /// Queues a small message to be sent in order, ahead of frames.
    public func send(_ bytes: [UInt8]) {
        let m = ZMQMessage(size: bytes.count)
        bytes.withUnsafeBytes { m.mutableBytes.copyMemory(from: $0) }
        loop.enqueue(m, to: nil)
    }

    /// Puts a frame in the newest-wins slot; `buffer` is sent without copying and given back
    /// to its pool once libzmq is done with it. Returns true if an older frame was replaced.
    @discardableResult
    public func submitFrame(_ buffer: SendBuffer, length: Int) -> Bool {
        loop.replaceFrame(buffer.makeMessage(length: length))
    }

    public var counters: TransportCounters { loop.counters }
    public func close() { loop.stop() }
    deinit { loop.stop() }
}

/// A PUB socket that publishes messages to any number of subscribers (e.g. fused detections as
/// JSON), on its own thread. Slow subscribers lose messages (libzmq's PUB semantics), never the
/// publisher's time.
public final class PublisherEndpoint: Sendable {
    private let loop: SocketLoop
    public let endpoint: String

    public init(bind endpoint: String, options: SocketOptions = SocketOptions()) throws(ZMQError) {
        let context = ZMQContext()
        let socket = try ZMQSocket(context, type: ZMQ_PUB)
        try socket.set(ZMQ_LINGER, 0)
        try socket.set(ZMQ_SNDHWM, options.sendHWM)
        try socket.bind(endpoint)
        self.endpoint = socket.lastEndpoint
        loop = try SocketLoop(socket: socket, isRouter: false, zap: nil, monitorEndpoint: nil, inboundCapacity: 1)
        loop.start(name: "slimsplit-pub")
    }

    /// Publishes one message (copied). Never blocks.
    public func publish(_ bytes: [UInt8]) {
        let m = ZMQMessage(size: bytes.count)
        bytes.withUnsafeBytes { m.mutableBytes.copyMemory(from: $0) }
        loop.enqueue(m, to: nil)
    }

    public var counters: TransportCounters { loop.counters }
    public func close() { loop.stop() }
    deinit { loop.stop() }
}
