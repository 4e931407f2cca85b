import CZeroMQ
import Glibc
import Synchronization

/// What a socket thread hands to its consumer.
public enum TransportEvent: Sendable {
    /// A complete single-part message; on the server with the sender's routing id.
    case message(ReceivedMessage)
    /// A connection completed its handshake (the agent then sends Hello).
    case connected
    /// A connection was lost; libzmq reconnects by itself.
    case disconnected
}

public struct ReceivedMessage: Sendable {
    /// The sender's routing id (server side only).
    public let routingID: RoutingID
    public let message: ZMQMessage
    /// Monotonic clock at receipt, for queue-delay measurement.
    public let receivedAtNs: UInt64
    /// The authenticated peer's name from the allow-list (ZAP "User-Id"), if Curve is on.
    public let peerName: String?
    /// Parts beyond the first (the protocol uses single-part messages; extra parts were
    /// read and discarded, and the receiver rejects the message).
    public let extraParts: Int
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

/// Owns one ZeroMQ socket (plus its ZAP handler and monitor) on a dedicated thread.
///
/// libzmq sockets are not thread-safe; every call on them happens on this thread. Other threads
/// talk to it through a locked queue and a wake-up pipe that `zmq_poll` watches with the
/// socket, so the thread sleeps until there is work: no busy polling. Inbound messages go to an
/// `AsyncStream`.
final class SocketLoop: @unchecked Sendable {
    private struct Outgoing {
        var routingID: RoutingID?
        var message: ZMQMessage
        var delivery: Delivery = .reliable
    }

    private struct Shared {
        var outbox: [Outgoing] = []
        // Router: reliable messages waiting for room in their peer's queue, in order per peer.
        var held: [RoutingID: [Outgoing]] = [:]
        var frame: ZMQMessage?  // newest-wins slot (agent frames)
        var stopping = false
        /// With `stopping`: hand what is queued to libzmq and give it this long to deliver it.
        var drainMs: Int32 = 0
        var greeting: [UInt8]?
        var counters = TransportCounters()
    }

    private let socket: ZMQSocket
    private let zap: ZAPHandler?
    private let monitor: ZMQSocket?
    /// Router only: peer addresses whose handshake succeeded and that are still connected.
    private var established = Set<String>()
    private let isRouter: Bool
    private let sendOnly: Bool
    private let shared = Mutex(Shared())
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let continuation: AsyncStream<TransportEvent>.Continuation
    let events: AsyncStream<TransportEvent>
    private var thread: pthread_t?
    private let done = Mutex(false)

    init(
        socket: ZMQSocket, isRouter: Bool, zap: ZAPHandler?, monitorEndpoint: String?, greeting: [UInt8]? = nil,
        inboundCapacity: Int
    ) throws(ZMQError) {
        self.socket = socket
        self.isRouter = isRouter
        var type: Int32 = 0
        var len = MemoryLayout<Int32>.size
        zmq_getsockopt(socket.handle, ZMQ_TYPE, &type, &len)
        sendOnly = type == ZMQ_PUB
        self.zap = zap
        if let monitorEndpoint {
            // Agents watch their own connection; the server counts failed handshakes.
            let events =
                ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_DISCONNECTED
                | (isRouter
                    ? ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                        | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH : 0)
            try check(zmq_socket_monitor(socket.handle, monitorEndpoint, events), "zmq_socket_monitor")
            let m = try ZMQSocket(socket.context, type: ZMQ_PAIR)
            try m.connect(monitorEndpoint)
            monitor = m
        } else {
            monitor = nil
        }
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw ZMQError("pipe", code: errno) }
        wakeRead = fds[0]
        wakeWrite = fds[1]
        _ = fcntl(wakeRead, F_SETFL, O_NONBLOCK)
        _ = fcntl(wakeWrite, F_SETFL, O_NONBLOCK)
        shared.withLock { $0.greeting = greeting }
        (events, continuation) = AsyncStream.makeStream(
            of: TransportEvent.self, bufferingPolicy: .bufferingOldest(inboundCapacity))
    }

    func start(name: String) {
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        pthread_create(
            &t, nil,
            { arg in
                let loop = Unmanaged<SocketLoop>.fromOpaque(arg!).takeRetainedValue()
                loop.run()
                return nil
            }, box.toOpaque())
        thread = t
        _ = name
    }

    var counters: TransportCounters { shared.withLock { $0.counters } }

    /// Queues a message for sending, in order. `routingID` is required on a router.
    func enqueue(_ message: ZMQMessage, to routingID: RoutingID?, delivery: Delivery = .reliable) {
        shared.withLock { $0.outbox.append(Outgoing(routingID: routingID, message: message, delivery: delivery)) }
        wake()
    }

    /// Router only: reliable messages waiting for room in `routingID`'s queue.
    func reliableBacklog(of routingID: RoutingID) -> Int {
        shared.withLock { $0.counters.reliableBacklog[routingID] ?? 0 }
    }

    /// Puts a frame in the newest-wins slot. Returns true when it replaced an unsent frame.
    @discardableResult
    func replaceFrame(_ message: ZMQMessage) -> Bool {
        let replaced = shared.withLock { s -> Bool in
            let had = s.frame != nil
            if had { s.counters.framesReplaced += 1 }
            s.frame = message
            return had
        }
        wake()
        return replaced
    }

    /// Stops the thread, closes the sockets and finishes the event stream. Idempotent; waits
    /// for the thread to end. With `drainMs` > 0, messages already queued (Acks, Results) are
    /// handed to libzmq first and the socket lingers up to that long to deliver them.
    func stop(drainMs: Int32 = 0) {
        let first = shared.withLock { s -> Bool in
            defer {
                s.stopping = true
                s.drainMs = drainMs
            }
            return !s.stopping
        }
        guard first, let t = thread else { return }
        wake()
        pthread_join(t, nil)
    }

    private func wake() {
        var b: UInt8 = 1
        _ = write(wakeWrite, &b, 1)  // EAGAIN means a wake-up is already pending
    }

    private func drainWake() {
        var buf = [UInt8](repeating: 0, count: 64)
        while read(wakeRead, &buf, buf.count) > 0 {}
    }

    private func run() {
        var items = [zmq_pollitem_t](repeating: zmq_pollitem_t(), count: 4)
        var outbox: [Outgoing] = []
        // Router: reliable messages waiting for room in their peer's queue, in order per peer.
        var held: [RoutingID: [Outgoing]] = [:]
        var frame: ZMQMessage?
        // Frames wait until this connection has been greeted (the agent's Hello went first).
        let needsGreeting = shared.withLock { $0.greeting != nil }
        var greeted = !needsGreeting
        var lingerMs: Int32 = 0
        while true {
            let (stopping, drainMs) = shared.withLock { s -> (Bool, Int32) in
                outbox.append(contentsOf: s.outbox)
                s.outbox.removeAll(keepingCapacity: true)
                return (s.stopping, s.drainMs)
            }
            if stopping {
                if drainMs > 0 {
                    // Into libzmq's queues (held messages as their peers make room, up to the
                    // drain time); the linger below delivers them.
                    let deadline = SystemClock.monotonicNs() + UInt64(drainMs) * 1_000_000
                    flush(&outbox, held: &held)
                    while !held.isEmpty, SystemClock.monotonicNs() < deadline {
                        _ = zmq_poll(nil, 0, 2)
                        flush(&outbox, held: &held)
                    }
                    lingerMs = drainMs
                }
                break
            }
            let hasFrame = greeted && (frame != nil || shared.withLock { $0.frame != nil })
            items[0] = zmq_pollitem_t(
                socket: socket.handle, fd: 0,
                events: (sendOnly ? 0 : Int16(ZMQ_POLLIN)) | ((outbox.isEmpty && !hasFrame) ? 0 : Int16(ZMQ_POLLOUT)),
                revents: 0)
            items[1] = zmq_pollitem_t(socket: nil, fd: wakeRead, events: Int16(ZMQ_POLLIN), revents: 0)
            var n: Int32 = 2
            if let zap {
                items[Int(n)] = zmq_pollitem_t(socket: zap.socket.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
                n += 1
            }
            let monitorIndex = Int(n)
            if let monitor {
                items[monitorIndex] = zmq_pollitem_t(
                    socket: monitor.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
                n += 1
            }
            // Held messages are retried every 2 ms: a ROUTER cannot poll one peer's queue.
            let rc = zmq_poll(&items, n, held.isEmpty ? -1 : 2)
            if rc < 0 {
                if zmq_errno() == EINTR { continue }
                break  // context terminated
            }
            if items[1].revents != 0 { drainWake() }
            if zap != nil, items[2].revents != 0 { zap!.handleRequests() }
            if monitor != nil, items[monitorIndex].revents != 0 {
                let (connected, disconnected) = readMonitor()
                let greeting = shared.withLock { $0.greeting }
                if disconnected, needsGreeting { greeted = false }
                if connected, let greeting {
                    let m = ZMQMessage(size: greeting.count)
                    greeting.withUnsafeBytes { m.mutableBytes.copyMemory(from: $0) }
                    outbox.insert(Outgoing(routingID: nil, message: m), at: 0)
                    greeted = true
                }
            }
            if items[0].revents & Int16(ZMQ_POLLIN) != 0 { receiveAvailable() }
            if items[0].revents & Int16(ZMQ_POLLOUT) != 0 || !outbox.isEmpty || !held.isEmpty {
                flush(&outbox, held: &held)
                if outbox.isEmpty, greeted {
                    if frame == nil {
                        frame = shared.withLock { s in
                            defer { s.frame = nil }
                            return s.frame
                        }
                    }
                    if let f = frame, sendFrame(f) { frame = nil }
                }
            }
        }
        outbox.removeAll()
        held.removeAll()
        frame = nil
        shared.withLock {
            $0.frame = nil
            $0.outbox.removeAll()
        }
        monitor?.close()
        zap?.socket.close()
        if lingerMs > 0 { try? socket.set(ZMQ_LINGER, lingerMs) }
        socket.close()
        socket.context.terminate()
        close(wakeRead)
        close(wakeWrite)
        continuation.finish()
    }

    private func receiveAvailable() {
        // Bounded batch so outbound traffic and the ZAP handler are never starved.
        for _ in 0..<256 {
            var routing = RoutingID.none
            if isRouter {
                let id = ZMQMessage()
                guard zmq_msg_recv(id.msg, socket.handle, ZMQ_DONTWAIT) >= 0 else { return }
                routing = RoutingID(Array(id.bytes))
            }
            let msg = ZMQMessage()
            guard zmq_msg_recv(msg.msg, socket.handle, ZMQ_DONTWAIT) >= 0 else { return }
            var extra = 0
            var more = zmq_msg_more(msg.msg) != 0
            while more {
                let part = ZMQMessage()
                guard zmq_msg_recv(part.msg, socket.handle, ZMQ_DONTWAIT) >= 0 else { break }
                extra += 1
                more = zmq_msg_more(part.msg) != 0
            }
            let event = ReceivedMessage(
                routingID: routing, message: msg, receivedAtNs: SystemClock.monotonicNs(),
                peerName: zap == nil ? nil : msg.property("User-Id"), extraParts: extra)
            let dropped: Bool
            if case .dropped = continuation.yield(.message(event)) { dropped = true } else { dropped = false }
            shared.withLock { s in
                s.counters.received += 1
                s.counters.multipartDiscarded += extra
                if dropped { s.counters.inboundDropped += 1 }
            }
        }
    }

    private func flush(_ outbox: inout [Outgoing], held: inout [RoutingID: [Outgoing]]) {
        guard isRouter else {
            var i = 0
            while i < outbox.count, zmq_msg_send(outbox[i].message.msg, socket.handle, ZMQ_DONTWAIT) >= 0 {
                shared.withLock { $0.counters.sent += 1 }
                i += 1
            }
            outbox.removeFirst(i)
            return
        }
        // Router. Held messages first, oldest first per peer; a peer whose queue is still full
        // keeps the rest of its queue. One slow or departed agent never holds up the others.
        var sent = 0
        var dropped: [(RoutingID, String)] = []
        var backlogChanged = false
        for (id, queue) in held {
            var i = 0
            while i < queue.count {
                if sendRouted(queue[i]) {
                    sent += 1
                } else if zmq_errno() == EHOSTUNREACH {
                    dropped += Array(repeating: (id, "unroutable"), count: queue.count - i)
                    i = queue.count
                    break
                } else {
                    break
                }
                i += 1
            }
            if i > 0 {
                backlogChanged = true
                held[id] = i == queue.count ? nil : Array(queue[i...])
            }
        }
        for o in outbox {
            guard let id = o.routingID else { continue }
            if held[id] != nil {  // keep the order behind the peer's held messages
                if o.delivery == .reliable {
                    held[id]!.append(o)
                    backlogChanged = true
                } else {
                    dropped.append((id, "send_queue_full"))
                }
            } else if sendRouted(o) {
                sent += 1
            } else if zmq_errno() == EHOSTUNREACH {
                dropped.append((id, "unroutable"))
            } else if o.delivery == .reliable {
                held[id] = [o]
                backlogChanged = true
            } else {
                dropped.append((id, "send_queue_full"))
            }
        }
        outbox.removeAll(keepingCapacity: true)
        guard sent > 0 || !dropped.isEmpty || backlogChanged else { return }
        shared.withLock { s in
            s.counters.sent += sent
            for (id, reason) in dropped {
                if reason == "unroutable" { s.counters.unroutable += 1 } else { s.counters.sendQueueFull += 1 }
                s.counters.droppedByRoute[id, default: [:]][reason, default: 0] += 1
            }
            if backlogChanged { s.counters.reliableBacklog = held.mapValues(\.count) }
        }
    }

    private func sendRouted(_ o: Outgoing) -> Bool {
        guard let id = o.routingID else { return false }
        let rc = id.bytes.withUnsafeBytes {
            zmq_send(socket.handle, $0.baseAddress, $0.count, ZMQ_SNDMORE | ZMQ_DONTWAIT)
        }
        guard rc >= 0 else { return false }
        return zmq_msg_send(o.message.msg, socket.handle, ZMQ_DONTWAIT) >= 0
    }

    private func sendFrame(_ f: ZMQMessage) -> Bool {
        guard zmq_msg_send(f.msg, socket.handle, ZMQ_DONTWAIT) >= 0 else { return false }
        shared.withLock { $0.counters.sent += 1 }
        return true
    }

    /// Reads pending monitor events: whether a connection completed its handshake, and whether
    /// one was lost.
    private func readMonitor() -> (connected: Bool, disconnected: Bool) {
        var connected = false
        var disconnected = false
        while true {
            let ev = ZMQMessage()
            guard zmq_msg_recv(ev.msg, monitor!.handle, ZMQ_DONTWAIT) >= 0 else { return (connected, disconnected) }
            var address = ""
            if zmq_msg_more(ev.msg) != 0 {
                let addr = ZMQMessage()
                if zmq_msg_recv(addr.msg, monitor!.handle, ZMQ_DONTWAIT) >= 0 {
                    address = String(decoding: addr.bytes, as: UTF8.self)
                }
            }
            guard ev.count >= 2 else { continue }
            let code = Int32(UInt16(littleEndian: ev.bytes.loadUnaligned(as: UInt16.self)))
            if isRouter {
                let failure =
                    code == ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
                    ? "no_detail"
                    : code == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
                        ? "protocol" : code == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH ? "auth" : nil
                if let failure { shared.withLock { $0.counters.handshakeFailures[failure, default: 0] += 1 } }
                // Each connection has its own peer address (host and source port).
                if code == ZMQ_EVENT_HANDSHAKE_SUCCEEDED { established.insert(address) }
                if code == ZMQ_EVENT_DISCONNECTED, established.remove(address) != nil {
                    shared.withLock { $0.counters.sessionsLost += 1 }
                }
            } else {
                if code == ZMQ_EVENT_HANDSHAKE_SUCCEEDED {
                    connected = true
                    continuation.yield(.connected)
                }
                if code == ZMQ_EVENT_DISCONNECTED {
                    disconnected = true
                    connected = false
                    continuation.yield(.disconnected)
                }
            }
        }
    }
}
