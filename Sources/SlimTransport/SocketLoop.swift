import CZeroMQ
import Glibc
import Synchronization

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
        // Router: reliable messages waiting for room in their peer's queue.
        var routed = RoutedOutbox<ZMQMessage>()
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
                    flush(&outbox, &routed)
                    while routed.isHolding, SystemClock.monotonicNs() < deadline {
                        _ = zmq_poll(nil, 0, 2)
                        flush(&outbox, &routed)
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
            let rc = zmq_poll(&items, n, routed.isHolding ? 2 : -1)
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
            if items[0].revents & Int16(ZMQ_POLLOUT) != 0 || !outbox.isEmpty || routed.isHolding {
                flush(&outbox, &routed)
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
        routed.removeAll()
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

    private func flush(_ outbox: inout [Outgoing], _ routed: inout RoutedOutbox<ZMQMessage>) {
        guard isRouter else {
            var i = 0
            while i < outbox.count, zmq_msg_send(outbox[i].message.msg, socket.handle, ZMQ_DONTWAIT) >= 0 {
                shared.withLock { $0.counters.sent += 1 }
                i += 1
            }
            outbox.removeFirst(i)
            return
        }
        // Lazily: no array is made per flush on the send path.
        let items = outbox.lazy.compactMap { o in
            o.routingID.map { Routed(routingID: $0, message: o.message, delivery: o.delivery) }
        }
        let outcome = routed.flush(items) { r in
            if sendRouted(r.routingID, r.message) { return .sent }
            return zmq_errno() == EHOSTUNREACH ? .gone : .full
        }
        outbox.removeAll(keepingCapacity: true)
        if !outcome.isEmpty { shared.withLock { $0.counters.record(outcome) } }
    }

    private func sendRouted(_ id: RoutingID, _ message: ZMQMessage) -> Bool {
        let rc = id.bytes.withUnsafeBytes {
            zmq_send(socket.handle, $0.baseAddress, $0.count, ZMQ_SNDMORE | ZMQ_DONTWAIT)
        }
        guard rc >= 0 else { return false }
        return zmq_msg_send(message.msg, socket.handle, ZMQ_DONTWAIT) >= 0
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
