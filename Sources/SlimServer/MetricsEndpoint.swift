import Glibc
import SlimEngine
import SlimTransport

/// A minimal Prometheus endpoint: `GET /metrics` over HTTP/1.0 on its own thread, answering
/// with the text exposition format that `render` produces. One request at a time, bounded
/// reads, no keep-alive: enough for a Prometheus scraper or `curl`, without an HTTP stack in
/// the build.
public final class MetricsEndpoint: @unchecked Sendable {
    public let port: Int
    private let fd: Int32
    private let render: @Sendable () -> String
    private let stopped = Locked(false)

    /// Binds `host:port` (port 0: any free port, see `port`).
    public init(host: String = "0.0.0.0", port: Int, render: @escaping @Sendable () -> String) throws(ZMQError) {
        self.render = render
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw ZMQError("socket", code: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr(host)
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard ok == 0, listen(fd, 16) == 0 else { Glibc.close(fd); throw ZMQError("bind metrics \(host):\(port)", code: errno) }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &bound) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        self.port = Int(UInt16(bigEndian: bound.sin_port))
        self.fd = fd
        let box = Unmanaged.passRetained(self)
        var t = pthread_t()
        pthread_create(&t, nil, { arg in
            let me = Unmanaged<MetricsEndpoint>.fromOpaque(arg!).takeRetainedValue()
            me.serve()
            return nil
        }, box.toOpaque())
        pthread_detach(t)
    }

    public func close() {
        stopped.withLock { $0 = true }
        shutdown(fd, Int32(SHUT_RDWR))
        Glibc.close(fd)
    }

    private func serve() {
        var buf = [UInt8](repeating: 0, count: 4096)
        while !stopped.value {
            let c = accept(fd, nil, nil)
            if c < 0 { if stopped.value { return } else { continue } }
            var tv = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let n = read(c, &buf, buf.count)
            let request = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
            let ok = request.hasPrefix("GET /metrics")
            let body = ok ? render() : "not found: try /metrics\n"
            let head = "HTTP/1.0 \(ok ? "200 OK" : "404 Not Found")\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n"
            let out = Array((head + body).utf8)
            var sent = 0
            while sent < out.count {
                let w = out[sent...].withUnsafeBytes { write(c, $0.baseAddress, $0.count) }
                if w <= 0 { break }
                sent += w
            }
            Glibc.close(c)
        }
    }
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
    metric("engine_info", "gauge", "The engine's kernel path (portable, avx2, avx-vnni, avx512, neon, neon-dot), as a label.")
    lines.append("slimsplit_engine_info{kernels=\"\(KernelPath.default)\"} 1")
    metric("frames_total", "counter", "Feature frames accepted, per agent.")
    for (a, s) in stats { lines.append("slimsplit_frames_total{agent=\"\(a)\"} \(s.frames)") }
    metric("bytes_total", "counter", "Bytes of accepted feature frames, per agent.")
    for (a, s) in stats { lines.append("slimsplit_bytes_total{agent=\"\(a)\"} \(s.bytes)") }
    metric("rejected_total", "counter", "Messages rejected, per agent and reason (PROTOCOL.md section 7).")
    for (a, s) in stats { for (r, n) in s.rejected.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
        lines.append("slimsplit_rejected_total{agent=\"\(a)\",reason=\"\(r.rawValue)\"} \(n)") } }
    for (k, n) in server.endpoint.unauthenticated.sorted(by: { $0.key < $1.key }) {
        lines.append("slimsplit_rejected_total{agent=\"key:\(k)\",reason=\"unauthenticated\"} \(n)")
    }
    metric("send_dropped_total", "counter", "Messages to an agent that the server's socket dropped, by reason: send_queue_full (its queue at socket.send_hwm) or unroutable (gone).")
    for (a, s) in stats { for (r, n) in s.dropped.sorted(by: { $0.key < $1.key }) {
        lines.append("slimsplit_send_dropped_total{agent=\"\(a)\",reason=\"\(r)\"} \(n)") } }
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
    metric("handshake_failures_total", "counter", "Failed Curve handshakes by kind: no_detail (e.g. a client without Curve), protocol (e.g. a wrong server key), auth (key refused).")
    for (k, n) in c.handshakeFailures.sorted(by: { $0.key < $1.key }) { lines.append("slimsplit_handshake_failures_total{kind=\"\(k)\"} \(n)") }
    if let fusion {
        let f = fusion.metrics
        metric("fusion_results_total", "counter", "Results sent (one per agent and fused frame).")
        lines.append("slimsplit_fusion_results_total \(f.results)")
        metric("fusion_late_frames_total", "counter", "Frames left out of a fusion because they were outside the window.")
        lines.append("slimsplit_fusion_late_frames_total \(f.late)")
        metric("fusion_seconds", "summary", "Time to fuse and decode for one agent.")
        for (q, v) in f.quantiles { lines.append("slimsplit_fusion_seconds{quantile=\"\(q)\"} \(v)") }
        lines.append("slimsplit_fusion_seconds_sum \(f.sum)")
        lines.append("slimsplit_fusion_seconds_count \(f.count)")
        metric("stage_seconds", "summary", "Server stages per agent-frame: dequantize, warp_fuse, head (backbone and heads), nms (decode and NMS).")
        for (stage, p50, p99) in f.stages {
            lines.append("slimsplit_stage_seconds{stage=\"\(stage)\",quantile=\"0.5\"} \(p50)")
            lines.append("slimsplit_stage_seconds{stage=\"\(stage)\",quantile=\"0.99\"} \(p99)")
        }
    }
    return lines.joined(separator: "\n") + "\n"
}
