import Logging
import Synchronization

/// Logs an event the first time its key is seen, then at most once per interval with the number
/// of occurrences suppressed meanwhile, so that a flood of bad frames cannot flood the log.
public final class RateLimitedLog: Sendable {
    private struct Entry {
        var lastNs: UInt64
        var suppressed: Int
    }
    private let logger: Logger
    private let intervalNs: UInt64
    private let entries = Mutex<[String: Entry]>([:])

    public init(logger: Logger, interval seconds: Double = 5) {
        self.logger = logger
        intervalNs = UInt64(seconds * 1e9)
    }

    /// Returns true when the event was written to the log.
    @discardableResult
    public func warning(key: String, _ message: @autoclosure () -> String, metadata: Logger.Metadata = [:]) -> Bool {
        let now = SystemClock.monotonicNs()
        let suppressed: Int? = entries.withLock { e in
            if var entry = e[key] {
                if now &- entry.lastNs < intervalNs {
                    entry.suppressed += 1
                    e[key] = entry
                    return nil
                }
                let n = entry.suppressed
                e[key] = Entry(lastNs: now, suppressed: 0)
                return n
            }
            e[key] = Entry(lastNs: now, suppressed: 0)
            return 0
        }
        guard let suppressed else { return false }
        var md = metadata
        if suppressed > 0 { md["suppressed_since_last"] = "\(suppressed)" }
        logger.warning("\(message())", metadata: md)
        return true
    }
}
