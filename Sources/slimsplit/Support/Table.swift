import SlimAgent
import SlimPipeline

/// A plain-text table with right-aligned numeric columns.
struct TextTable {
    var header: [String]
    var rows: [[String]] = []

    init(_ header: [String]) { self.header = header }

    mutating func add(_ row: [String]) { rows.append(row) }

    func render() -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in
                let pad = String(repeating: " ", count: widths[i] - c.count)
                return i == 0 ? c + pad : pad + c
            }.joined(separator: "  ")
        }
        var out = [line(header), widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ")]
        out += rows.map(line)
        return out.joined(separator: "\n")
    }
}

/// The agents' closing table: what each link sent, what came back.
func agentTable(_ agents: [FeatureAgent], seconds: Double) -> TextTable {
    var t = TextTable([
        "agent", "frames", "acked", "results", "replaced", "KB/frame", "kbit/s", "RTT p50 ms", "RTT p99 ms", "control",
    ])
    for a in agents {
        let s = a.stats
        let kb = s.framesSubmitted > 0 ? Double(s.bytesSubmitted) / Double(s.framesSubmitted) / 1024 : 0
        let control = s.control.map { "epoch \($0.epoch)" } ?? "none"
        t.add([
            a.identity.agentID, "\(s.framesSubmitted)", "\(s.acks)", "\(s.results)",
            "\(s.framesReplaced + s.framesNoBuffer)", fmt(kb, 2),
            fmt(Double(s.bytesAcked) * 8 / 1000 / max(seconds, 1e-9), 0),
            s.rttPercentileMs(50).map { fmt($0, 2) } ?? "-", s.rttPercentileMs(99).map { fmt($0, 2) } ?? "-", control,
        ])
    }
    return t
}
