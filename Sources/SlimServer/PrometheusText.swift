import SlimEngine
import SlimTransport

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
    metric("frames_total", "counter", "Numbered messages accepted (feature frames and Boxes), per agent.")
    for (a, s) in stats { lines.append("slimsplit_frames_total{agent=\"\(a)\"} \(s.frames)") }
    metric(
        "boxes_messages_total", "counter",
        "Boxes messages accepted (the agent's own detections: the boxes rung), per agent.")
    for (a, s) in stats { lines.append("slimsplit_boxes_messages_total{agent=\"\(a)\"} \(s.boxesMessages)") }
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
        "Messages to an agent that the server's socket dropped, by reason: send_queue_full (a Result while its queue was at socket.send_hwm; Acks and Controls wait instead) or unroutable (gone)."
    )
    for (a, s) in stats {
        for (r, n) in s.dropped.sorted(by: { $0.key < $1.key }) {
            lines.append("slimsplit_send_dropped_total{agent=\"\(a)\",reason=\"\(r)\"} \(n)")
        }
    }
    metric(
        "send_backlog", "gauge",
        "Acks and Controls held for an agent whose queue is full (never dropped; past a bound its frames are refused: ack_backlog)."
    )
    for (a, s) in stats { lines.append("slimsplit_send_backlog{agent=\"\(a)\"} \(s.backlog)") }
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
        metric(
            "fusion_duplicate_frames_total", "counter",
            "Frames not taken because the agent's slot already held that sequence number or a later one.")
        lines.append("slimsplit_fusion_duplicate_frames_total \(f.duplicates)")
        metric(
            "fusion_fused_twice_total", "counter", "Results for an agent frame that was already fused (should stay 0).")
        lines.append("slimsplit_fusion_fused_twice_total \(f.fusedTwice)")
        metric(
            "fusion_pose_alignments_total", "counter",
            "Other agents' placements in an ego's fusion corrected from the objects both detect (fusion.pose_alignment).")
        lines.append("slimsplit_fusion_pose_alignments_total \(f.poseAlignments)")
        metric("fusion_seconds", "summary", "Time to fuse and decode for one agent.")
        for (q, v) in f.quantiles { lines.append("slimsplit_fusion_seconds{quantile=\"\(q)\"} \(v)") }
        lines.append("slimsplit_fusion_seconds_sum \(f.sum)")
        lines.append("slimsplit_fusion_seconds_count \(f.count)")
        metric(
            "stage_seconds", "summary",
            "Server stages per agent-frame: dequantize, warp_fuse, head (backbone and heads), nms (decode and NMS); prepare per pass (deep fusion: every agent's decompress and peer head).")
        for (stage, p50, p99) in f.stages {
            lines.append("slimsplit_stage_seconds{stage=\"\(stage)\",quantile=\"0.5\"} \(p50)")
            lines.append("slimsplit_stage_seconds{stage=\"\(stage)\",quantile=\"0.99\"} \(p99)")
        }
    }
    return lines.joined(separator: "\n") + "\n"
}
