import Glibc
import SlimAgent
import SlimEngine

/// Prometheus text for an agent: frames, acks, results, drops, bytes, RTT, goodput, stages.
public func agentPrometheusText(_ a: FeatureAgent, stages: AgentStageTimes, widthIndex: Int?, bits: Int?) -> String {
    let s = a.stats
    let id = a.identity.agentID
    var l: [String] = []
    func m(_ name: String, _ type: String, _ help: String, _ value: String, labels: String = "") {
        l.append("# HELP slimsplit_agent_\(name) \(help)")
        l.append("# TYPE slimsplit_agent_\(name) \(type)")
        l.append("slimsplit_agent_\(name){agent=\"\(id)\"\(labels)} \(value)")
    }
    m(
        "engine_info", "gauge", "The engine's kernel path, as a label.", "1",
        labels: ",kernels=\"\(KernelPath.default)\"")
    m("frames_total", "counter", "Frames submitted.", "\(s.framesSubmitted)")
    m("acks_total", "counter", "Frames acknowledged by the server.", "\(s.acks)")
    m("results_total", "counter", "Results (detections) received.", "\(s.results)")
    m(
        "dropped_total", "counter", "Frames dropped before sending, by reason.", "\(s.framesReplaced)",
        labels: ",reason=\"replaced_by_newer\"")
    l.append("slimsplit_agent_dropped_total{agent=\"\(id)\",reason=\"no_buffer\"} \(s.framesNoBuffer)")
    l.append("slimsplit_agent_dropped_total{agent=\"\(id)\",reason=\"rate_cap\"} \(s.framesRateCapped)")
    m("bytes_total", "counter", "Bytes submitted.", "\(s.bytesSubmitted)")
    m("goodput_bytes_per_second", "gauge", "Uplink estimate from Acks.", "\(a.goodput.bytesPerSecond ?? 0)")
    if let widthIndex { m("width_index", "gauge", "Encoder width in use.", "\(widthIndex)") }
    if let bits { m("bits", "gauge", "Bits per transmitted value in use.", "\(bits)") }
    l.append("# HELP slimsplit_agent_rtt_seconds Submit to Ack.")
    l.append("# TYPE slimsplit_agent_rtt_seconds summary")
    for q in [50.0, 99.0] {
        l.append(
            "slimsplit_agent_rtt_seconds{agent=\"\(id)\",quantile=\"\(q / 100)\"} \((s.rttPercentileMs(q) ?? 0) / 1000)"
        )
    }
    l.append(
        "# HELP slimsplit_agent_stage_seconds Per frame: featurize, encode, quantize, pack (bit packing, LZ4, CRC).")
    l.append("# TYPE slimsplit_agent_stage_seconds summary")
    for (k, p50, p99) in stages.quantiles() {
        l.append("slimsplit_agent_stage_seconds{agent=\"\(id)\",stage=\"\(k)\",quantile=\"0.5\"} \(p50)")
        l.append("slimsplit_agent_stage_seconds{agent=\"\(id)\",stage=\"\(k)\",quantile=\"0.99\"} \(p99)")
    }
    return l.joined(separator: "\n") + "\n"
}
