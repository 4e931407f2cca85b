import Glibc

private func err(_ s: String) {
    var s = s
    s.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
}

/// A progress bar on stderr: redrawn in place on a terminal, a line every 10 % otherwise.
struct ProgressBar {
    let label: String
    let total: Int
    private var lastShown = -1
    private let tty = isatty(2) != 0

    init(_ label: String, total: Int) {
        self.label = label
        self.total = max(total, 1)
    }

    mutating func update(_ done: Int, _ note: String = "") {
        let pct = done * 100 / total
        if tty {
            guard pct != lastShown || done == total else { return }
            let filled = pct * 30 / 100
            let bar = String(repeating: "█", count: filled) + String(repeating: "·", count: 30 - filled)
            err("\r\(label) [\(bar)] \(pct)% \(done)/\(total) \(note)   ")
            if done >= total { err("\n") }
        } else if pct / 10 != lastShown / 10 || done == total {
            err("\(label): \(pct)% (\(done)/\(total)) \(note)\n")
        }
        lastShown = pct
    }
}
