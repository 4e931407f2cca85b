/// Estimates an agent's uplink from its Acks.
///
/// Each Ack gives a sample: the frame's bytes over the time the link spent on it, which is its
/// round-trip time (submit → Ack) minus the base RTT, the smallest RTT of the last `baseWindow`
/// frames (about a minute at 10 Hz: propagation and server processing change slowly, and a long
/// window keeps a slow stretch of link from passing its transmission time off as the floor). The
/// estimate is an exponentially weighted mean, but it falls at once to a lower sample (a link that
/// drops from 20 to 2 Mbit/s must be believed within one frame) and rises only gradually.
/// Queueing delay — RTT rising above the base — is the earliest sign of a saturated link, so it is
/// exposed for the controller as `queueingNs`. Fixed memory: no allocation after `init`.
public struct GoodputEstimator: Sendable {
    /// Weight of a new sample when the link looks faster.
    public var riseWeight = 0.25
    /// Frames over which the minimum RTT is remembered.
    public let baseWindow: Int

    public private(set) var bytesPerSecond: Double?
    public private(set) var lastRTTNs: UInt64 = 0
    private var ring: [UInt64]
    private var count = 0, next = 0

    public init(baseWindow: Int = 600) {
        precondition(baseWindow > 0)
        self.baseWindow = baseWindow
        ring = [UInt64](repeating: 0, count: baseWindow)
    }

    /// The smallest RTT of the recent window (propagation plus processing), ns.
    public private(set) var baseRTTNs: UInt64 = 0

    /// RTT above the recent minimum, ns.
    public var queueingNs: UInt64 { lastRTTNs > baseRTTNs ? lastRTTNs - baseRTTNs : 0 }

    /// The estimate's values at one moment (a plain value: reading it copies no buffer).
    public struct Snapshot: Sendable {
        public var bytesPerSecond: Double?
        public var lastRTTNs: UInt64
        public var baseRTTNs: UInt64
        public var queueingNs: UInt64 { lastRTTNs > baseRTTNs ? lastRTTNs - baseRTTNs : 0 }
    }

    public var snapshot: Snapshot {
        Snapshot(bytesPerSecond: bytesPerSecond, lastRTTNs: lastRTTNs, baseRTTNs: baseRTTNs)
    }

    /// Adds one acknowledged frame: its size and round-trip time.
    public mutating func add(bytes: Int, rttNs: UInt64) {
        lastRTTNs = rttNs
        ring[next] = rttNs
        next = (next + 1) % baseWindow
        count = min(count + 1, baseWindow)
        var base = UInt64.max
        for i in 0..<count where ring[i] < base { base = ring[i] }
        baseRTTNs = base
        // Transmission time: what the RTT has beyond its floor; at least 1 ms so a fast link does
        // not read as infinitely fast.
        let busy = max(Double(rttNs - min(rttNs, base)), 1e6) / 1e9
        let sample = Double(bytes) / busy
        if let g = bytesPerSecond {
            bytesPerSecond = sample < g ? sample : g + riseWeight * (sample - g)
        } else {
            bytesPerSecond = sample
        }
    }
}
