/// Chooses width, bit depth and sparsity so that each frame arrives before its deadline at the
/// best accuracy the link allows.
///
/// A configuration is feasible when its expected encode time plus bytes ÷ goodput fits the
/// deadline minus a margin. Among feasible ones the controller prefers the highest accuracy of the
/// model's rate–accuracy table. It steps down at once when the current configuration stops being
/// feasible (or queueing delay shows the link is saturated), and steps up only after a better one
/// has been feasible for `upAfter` consecutive frames — hysteresis, and a gentle probe upward when
/// the link recovers. Server caps (`Control`) bound the choice. Choosing is arithmetic on a small
/// table: no allocation.
public struct WidthController: Sendable {
    public struct Configuration: Sendable, Equatable {
        public var widthIndex: Int
        public var bits: Int
        public var threshold: Float
        /// Expected bytes on the wire per frame.
        public var bytes: Double
        /// Accuracy from the model's rate–accuracy table (AP@0.5, higher is better).
        public var accuracy: Double
        public init(widthIndex: Int, bits: Int, threshold: Float = 0, bytes: Double, accuracy: Double) {
            self.widthIndex = widthIndex
            self.bits = bits
            self.threshold = threshold
            self.bytes = bytes
            self.accuracy = accuracy
        }
    }

    public var configurations: [Configuration]
    public var deadlineSeconds = 0.1
    /// Share of the deadline kept free.
    public var margin = 0.25
    public var encodeSeconds = 0.005
    public var upAfter = 10
    /// Queueing delay beyond which the link counts as saturated.
    public var saturatedQueueingSeconds = 0.03
    public private(set) var current: Int
    private var betterStreak = 0

    /// - Parameter configurations: ordered by accuracy or not; the cheapest is the fallback.
    public init(configurations: [Configuration]) {
        precondition(!configurations.isEmpty)
        self.configurations = configurations
        current = configurations.indices.max { configurations[$0].accuracy < configurations[$1].accuracy }!
    }

    public var configuration: Configuration { configurations[current] }

    /// Updates the choice from the latest estimate; returns the configuration to use next.
    public mutating func update(goodputBytesPerSecond g: Double?, queueingSeconds q: Double = 0,
                                maxWidthIndex: Int = .max, maxBits: Int = 8) -> Configuration {
        guard let g, g > 0 else { return configuration }
        let budget = deadlineSeconds * (1 - margin) - encodeSeconds
        func allowed(_ c: Configuration) -> Bool { c.widthIndex <= maxWidthIndex && c.bits <= maxBits }
        func feasible(_ c: Configuration) -> Bool { allowed(c) && c.bytes / g <= budget }
        let feasibleSet = configurations.indices.filter { feasible(configurations[$0]) }
        let best = feasibleSet.max { configurations[$0].accuracy < configurations[$1].accuracy
            || (configurations[$0].accuracy == configurations[$1].accuracy && configurations[$0].bytes > configurations[$1].bytes) }
            ?? configurations.indices.filter { allowed(configurations[$0]) }.min { configurations[$0].bytes < configurations[$1].bytes }
            ?? current
        let saturated = q > saturatedQueueingSeconds
        if !feasible(configuration) || saturated && configurations[best].bytes < configuration.bytes {
            current = best  // down at once
            betterStreak = 0
        } else if configurations[best].accuracy > configuration.accuracy {
            betterStreak += 1
            if betterStreak >= upAfter { current = best; betterStreak = 0 }
        } else {
            betterStreak = 0
        }
        return configuration
    }
}
