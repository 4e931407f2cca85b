/// Estimates an agent's uplink from its Acks.
///
/// With at most one frame in flight (newest frame wins), each Ack gives a clean sample: the
/// frame's bytes over the time the link spent on it, which is its round-trip time minus the
/// smallest round-trip time seen recently (propagation and server processing). The estimate is
/// an exponentially weighted mean, but it falls at once to a lower sample (a link that drops from
/// 20 to 2 Mbit/s must be believed within one frame) and rises only gradually. Queueing delay —
/// RTT rising above the recent minimum — is the earliest sign of a saturated link, so it is
/// exposed for the controller as `queueingNs`.
public struct GoodputEstimator: Sendable {
    /// Weight of a new sample when the link looks faster.
    public var riseWeight = 0.25
    /// Samples over which the minimum RTT is remembered.
    public var baseWindow = 50

    public private(set) var bytesPerSecond: Double?
    public private(set) var lastRTTNs: UInt64 = 0
    private var recentRTT: [UInt64] = []

    public init() {}

    /// The smallest RTT of the recent window (propagation plus processing), ns.
    public var baseRTTNs: UInt64 { recentRTT.min() ?? 0 }

    /// RTT above the recent minimum, ns.
    public var queueingNs: UInt64 { lastRTTNs > baseRTTNs ? lastRTTNs - baseRTTNs : 0 }

    /// Adds one acknowledged frame: its size and round-trip time.
    public mutating func add(bytes: Int, rttNs: UInt64) {
        lastRTTNs = rttNs
        recentRTT.append(rttNs)
        if recentRTT.count > baseWindow { recentRTT.removeFirst(recentRTT.count - baseWindow) }
        // Transmission time: what the RTT has beyond its floor; at least 1 ms so a fast link does
        // not read as infinitely fast.
        let busy = max(Double(rttNs - min(rttNs, baseRTTNs)), 1e6) / 1e9
        let sample = Double(bytes) / busy
        if let g = bytesPerSecond {
            bytesPerSecond = sample < g ? sample : g + riseWeight * (sample - g)
        } else {
            bytesPerSecond = sample
        }
    }
}
