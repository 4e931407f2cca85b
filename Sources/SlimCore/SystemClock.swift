#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// The two clocks SlimSplit reads, in nanoseconds: monotonic (durations, deadlines; the same
/// CLOCK_MONOTONIC other processes on the machine read) and wall (the protocol's timestamps).
/// Named so as not to shadow the standard library's `Clock` protocol.
public enum SystemClock {
    /// Nanoseconds of CLOCK_MONOTONIC.
    public static func monotonicNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// Seconds of CLOCK_MONOTONIC.
    public static func monotonicSeconds() -> Double { Double(monotonicNs()) / 1e9 }

    /// Nanoseconds since the Unix epoch, as the protocol's timestamps are.
    public static func wallNs() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
