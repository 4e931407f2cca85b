import Glibc
import SlimEngine
import SlimTransport

/// A minimal Prometheus endpoint: `GET /metrics` over HTTP/1.0 on its own thread, answering
/// with the text exposition format that `render` produces. No keep-alive: enough for a
/// Prometheus scraper or `curl`, without an HTTP stack in the build.
///
/// Hostile clients cannot hold it: one thread polls every connection (non-blocking), each
/// connection has `clientTimeout` seconds in all to send its request (at most 8 KiB) and read
/// the answer, and at most `maxClients` are open at once (a new one closes the oldest). Slow and
/// idle clients therefore cost a scraper nothing but a place in the queue. Dropped clients are
/// counted in the answer (`slimsplit_metrics_clients_dropped_total`, by reason).
public final class MetricsEndpoint: @unchecked Sendable {
    public static let maxClients = 64
    public static let clientTimeout = 2.0
    public static let maxRequestBytes = 8192
    public let port: Int
    private let fd: Int32
    private let wake: (read: Int32, write: Int32)
    private let render: @Sendable () -> String
    private let stopped = Locked(false)
    private let dropped = Locked<[String: Int]>([:])

    /// Binds `host:port` (port 0: any free port, see `port`).
    public init(host: String = "0.0.0.0", port: Int, render: @escaping @Sendable () -> String) throws(ZMQError) {
        self.render = render
        let fd = socket(
            AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ZMQError("socket", code: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr(host)
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard ok == 0, listen(fd, 1024) == 0 else {
            Glibc.close(fd)
            throw ZMQError("bind metrics \(host):\(port)", code: errno)
        }
        var pipeFDs: [Int32] = [-1, -1]
        guard pipe(&pipeFDs) == 0 else {
            Glibc.close(fd)
            throw ZMQError("pipe", code: errno)
        }
        for p in pipeFDs {
            _ = fcntl(p, F_SETFL, fcntl(p, F_GETFL) | O_NONBLOCK)
            _ = fcntl(p, F_SETFD, FD_CLOEXEC)
        }
        wake = (pipeFDs[0], pipeFDs[1])
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        self.port = Int(UInt16(bigEndian: bound.sin_port))
        self.fd = fd
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        pthread_create(
            &t, nil,
            { arg in
                let me = Unmanaged<MetricsEndpoint>.fromOpaque(arg!).takeRetainedValue()
                me.serve()
                return nil
            }, box.toOpaque())
        pthread_detach(t)
    }

    /// Stops serving; the thread closes every connection and the socket.
    public func close() {
        guard
            stopped.withLock({ s in
                defer { s = true }
                return !s
            })
        else { return }
        var b: UInt8 = 1
        _ = write(wake.write, &b, 1)
    }

    private struct Client {
        var fd: Int32
        var deadline: UInt64
        var request: [UInt8] = []
        var answer: [UInt8] = []
        var sent = 0
    }

    private func serve() {
        var clients: [Client] = []
        var fds: [pollfd] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        func drop(_ c: Client, _ reason: String?) {
            Glibc.close(c.fd)
            if let reason { dropped.withLock { $0[reason, default: 0] += 1 } }
        }
        while !stopped.value {
            fds.removeAll(keepingCapacity: true)
            fds.append(pollfd(fd: fd, events: Int16(POLLIN), revents: 0))
            fds.append(pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0))
            for c in clients {
                fds.append(pollfd(fd: c.fd, events: Int16(c.answer.isEmpty ? POLLIN : POLLOUT), revents: 0))
            }
            let now = Clock.monotonicNs()
            let timeout =
                clients.map(\.deadline).min().map { Int32(min(($0 &- min($0, now)) / 1_000_000 + 1, 10_000)) } ?? -1
            _ = poll(&fds, nfds_t(fds.count), timeout)
            if stopped.value { break }
            let after = Clock.monotonicNs()
            var open: [Client] = []
            open.reserveCapacity(clients.count + 1)
            for (i, client) in clients.enumerated() {
                var c = client
                let events = fds[2 + i].revents
                var finished = false
                if c.answer.isEmpty, events & Int16(POLLIN | POLLHUP | POLLERR) != 0 {
                    let n = read(c.fd, &buf, buf.count)
                    if n <= 0 {
                        finished = true
                    } else {
                        c.request += buf[0..<n]
                        if let answer = answer(to: c.request) { c.answer = answer }
                    }
                }
                if !finished, !c.answer.isEmpty {
                    let w = c.answer[c.sent...].withUnsafeBytes {
                        send(c.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
                    }
                    if w > 0 { c.sent += w } else if errno != EAGAIN && errno != EINTR { finished = true }
                    if c.sent == c.answer.count { finished = true }
                }
                if finished {
                    drop(c, nil)
                } else if after >= c.deadline {
                    drop(c, c.answer.isEmpty ? "request_timeout" : "slow_reader")
                } else {
                    open.append(c)
                }
            }
            clients = open
            if fds[0].revents & Int16(POLLIN) != 0 {
                while true {
                    let c = accept(fd, nil, nil)
                    if c < 0 { break }
                    _ = fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK)
                    _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                    if clients.count >= Self.maxClients { drop(clients.removeFirst(), "too_many_clients") }
                    clients.append(Client(fd: c, deadline: after + UInt64(Self.clientTimeout * 1e9)))
                }
            }
        }
        for c in clients { Glibc.close(c.fd) }
        Glibc.close(fd)
        Glibc.close(wake.read)
        Glibc.close(wake.write)
    }

    private func answer(to request: [UInt8]) -> [UInt8]? {
        Self.response(to: request) {
            var body = render()
            body +=
                "# HELP slimsplit_metrics_clients_dropped_total Connections to this endpoint closed unanswered: request_timeout, slow_reader, too_many_clients.\n"
            body += "# TYPE slimsplit_metrics_clients_dropped_total counter\n"
            for (reason, n) in dropped.value.sorted(by: { $0.key < $1.key }) {
                body += "slimsplit_metrics_clients_dropped_total{reason=\"\(reason)\"} \(n)\n"
            }
            return body
        }
    }

    /// The answer to `request`, the bytes a client has sent so far: nil while its head (up to
    /// the blank line) is incomplete and under `maxRequestBytes`; then a complete HTTP/1.0
    /// response that depends on the head only: 200 with `body()` for `GET /metrics` (optionally
    /// with a query), 404 for anything else, 431 for a head over the limit.
    public static func response(to request: [UInt8], body: () -> String) -> [UInt8]? {
        let end =
            request.count >= 4
            ? (0...(request.count - 4)).first { i in
                request[i] == 13 && request[i + 1] == 10 && request[i + 2] == 13 && request[i + 3] == 10
            } : nil
        guard end != nil || request.count >= maxRequestBytes else { return nil }
        let target = Array("GET /metrics".utf8)
        let ok = end != nil && request.starts(with: target) && [32, 63, 13].contains(request[target.count])  // space, ?, CR
        let status = ok ? "200 OK" : end != nil ? "404 Not Found" : "431 Request Header Fields Too Large"
        let text = ok ? body() : "not found: try GET /metrics\n"
        let head =
            "HTTP/1.0 \(status)\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(text.utf8.count)\r\nConnection: close\r\n\r\n"
        return Array((head + text).utf8)
    }

    /// Clients dropped so far, by reason (request_timeout, slow_reader, too_many_clients).
    public var droppedClients: [String: Int] { dropped.value }
}

/// Prometheus text for a server: per agent frames, bytes, rejections by reason, width and bits;
/// transport counters; fusion ticks and their duration.
public func prometheusText(server: FeatureServer, fusion: FusionService?) -> String {
    var lines: [String] = []
    func metric(_ name: String, _ type: String, _ help: String) {
        lines.append("# HELP slimsplit_\(name) \(help)")
        lines.append("# TYPE slimsplit_\(name) \(type)")
    }
    let stats = server.stats.sorted { $0.key < $1.key }
    metric(
        "engine_info", "gauge",
        "The engine's kernel path (portable, avx2, avx-vnni, avx512, neon, neon-dot), as a label.")
    lines.append("slimsplit_engine_info{kernels=\"\(KernelPath.default)\"} 1")
    metric("frames_total", "counter", "Feature frames accepted, per agent.")
    for (a, s) in stats { lines.append("slimsplit_frames_total{agent=\"\(a)\"} \(s.frames)") }
    metric("bytes_total", "counter", "Bytes of accepted feature frames, per agent.")
    for (a, s) in stats { lines.append("slimsplit_bytes_total{agent=\"\(a)\"} \(s.bytes)") }
    metric("rejected_total", "counter", "Messages rejected, per agent and reason (PROTOCOL.md section 7).")
    for (a, s) in stats {
        for (r, n) in s.rejected.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
            lines.append("slimsplit_rejected_total{agent=\"\(a)\",reason=\"\(r.rawValue)\"} \(n)")
        }
    }
    for (k, n) in server.endpoint.unauthenticated.sorted(by: { $0.key < $1.key }) {
        lines.append("slimsplit_rejected_total{agent=\"key:\(k)\",reason=\"unauthenticated\"} \(n)")
    }
    metric(
        "send_dropped_total", "counter",
        "Messages to an agent that the server's socket dropped, by reason: send_queue_full (its queue at socket.send_hwm) or unroutable (gone)."
    )
    for (a, s) in stats {
        for (r, n) in s.dropped.sorted(by: { $0.key < $1.key }) {
            lines.append("slimsplit_send_dropped_total{agent=\"\(a)\",reason=\"\(r)\"} \(n)")
        }
    }
    metric("width", "gauge", "Width (fraction of channels) of each agent's last frame.")
    for (a, s) in stats { lines.append("slimsplit_width{agent=\"\(a)\"} \(Double(s.widthPerMille) / 1000)") }
    metric("bits", "gauge", "Bits per value of each agent's last frame.")
    for (a, s) in stats { lines.append("slimsplit_bits{agent=\"\(a)\"} \(s.bits)") }
    let c = server.endpoint.counters
    metric("transport_messages_total", "counter", "Messages received and sent by the server socket, and dropped.")
    lines.append("slimsplit_transport_messages_total{direction=\"received\"} \(c.received)")
    lines.append("slimsplit_transport_messages_total{direction=\"sent\"} \(c.sent)")
    lines.append("slimsplit_transport_messages_total{direction=\"inbound_dropped\"} \(c.inboundDropped)")
    lines.append("slimsplit_transport_messages_total{direction=\"unroutable\"} \(c.unroutable)")
    lines.append("slimsplit_transport_messages_total{direction=\"send_queue_full\"} \(c.sendQueueFull)")
    metric(
        "handshake_failures_total", "counter",
        "Failed Curve handshakes by kind: no_detail (e.g. a client without Curve), protocol (e.g. a wrong server key), auth (key refused)."
    )
    for (k, n) in c.handshakeFailures.sorted(by: { $0.key < $1.key }) {
        lines.append("slimsplit_handshake_failures_total{kind=\"\(k)\"} \(n)")
    }
    metric(
        "sessions_lost_total", "counter",
        "Connections closed after a successful handshake: the agent left, its heartbeat timed out, or libzmq dropped it for a message over socket.max_message_bytes (libzmq reports all three alike)."
    )
    lines.append("slimsplit_sessions_lost_total \(c.sessionsLost)")
    if let fusion {
        let f = fusion.metrics
        metric("fusion_results_total", "counter", "Results sent (one per agent and fused frame).")
        lines.append("slimsplit_fusion_results_total \(f.results)")
        metric(
            "fusion_late_frames_total", "counter", "Frames left out of a fusion because they were outside the window.")
        lines.append("slimsplit_fusion_late_frames_total \(f.late)")
        metric("fusion_seconds", "summary", "Time to fuse and decode for one agent.")
        for (q, v) in f.quantiles { lines.append("slimsplit_fusion_seconds{quantile=\"\(q)\"} \(v)") }
        lines.append("slimsplit_fusion_seconds_sum \(f.sum)")
        lines.append("slimsplit_fusion_seconds_count \(f.count)")
        metric(
            "stage_seconds", "summary",
            "Server stages per agent-frame: dequantize, warp_fuse, head (backbone and heads), nms (decode and NMS).")
        for (stage, p50, p99) in f.stages {
            lines.append("slimsplit_stage_seconds{stage=\"\(stage)\",quantile=\"0.5\"} \(p50)")
            lines.append("slimsplit_stage_seconds{stage=\"\(stage)\",quantile=\"0.99\"} \(p99)")
        }
    }
    return lines.joined(separator: "\n") + "\n"
}
