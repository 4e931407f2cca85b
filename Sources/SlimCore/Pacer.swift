import Glibc

/// Paces a stream to its timestamps, the one way every replay in SlimSplit keeps time
/// (recordings, sensor packets, packet captures, agents, sessions, synthetic frames).
///
/// The item stamped `t` is due `(t − origin) / speed` after `startNs` on the monotonic clock;
/// `origin` is the first stamp asked about unless given. Waiting for an item that is already
/// due returns at once, so a consumer that falls behind catches up instead of drifting.
public struct Pacer: Sendable {
    public let speed: Double
    public private(set) var startNs: UInt64
    private var origin: UInt64?

    /// - Parameters:
    ///   - speed: 1 is real time, 2 twice as fast (must be > 0).
    ///   - startNs: when the item stamped `origin` is due (monotonic ns; default now).
    ///   - origin: the stamp due at `startNs` (default: the first stamp asked about).
    public init(speed: Double = 1, startNs: UInt64 = SystemClock.monotonicNs(), origin: UInt64? = nil) {
        precondition(speed > 0 && speed.isFinite, "Pacer speed must be a positive number")
        self.speed = speed
        self.startNs = startNs
        self.origin = origin
    }

    /// Monotonic ns at which the item stamped `stamp` is due (a stamp before the origin is due
    /// at the start).
    public mutating func due(_ stamp: UInt64) -> UInt64 {
        let o = origin ?? stamp
        origin = o
        return startNs &+ UInt64(Double(stamp > o ? stamp - o : 0) / speed)
    }

    /// Sleeps until the item stamped `stamp` is due.
    public mutating func wait(for stamp: UInt64) async throws {
        let d = due(stamp)
        let now = SystemClock.monotonicNs()
        if d > now { try await Task.sleep(nanoseconds: d - now) }
    }

    /// The same for a thread outside Swift concurrency (it blocks the thread; never call it
    /// from a task).
    public mutating func waitBlocking(for stamp: UInt64) {
        let d = due(stamp)
        while true {
            let now = SystemClock.monotonicNs()
            guard d > now else { return }
            usleep(useconds_t(min((d - now) / 1000, 1_000_000)))
        }
    }

    /// Starts the stream again (a loop): its origin is due at `startNs`.
    public mutating func restart(at startNs: UInt64) { self.startNs = startNs }
}
