import SlimEngine

/// Chooses width, bit depth and sparsity so that each frame arrives before its deadline at the
/// best accuracy the link allows.
///
/// A configuration is feasible when its expected encode time plus bytes ÷ goodput (bytes from
/// the model's table, scaled by how the recent frames compared with it) fits the
/// deadline minus a margin. Among feasible ones the controller prefers the highest accuracy of the
/// model's rate–accuracy table. It steps down at once when the current configuration stops being
/// feasible (or queueing delay shows the link is saturated), and steps up only after a better one
/// has been feasible for `upAfter` consecutive frames — hysteresis, and a gentle probe upward when
/// the link recovers. Server caps (`Control`) bound the choice. Choosing is arithmetic on a small
/// table: no allocation.
public struct WidthController: Sendable {
    /// A row of the model's rate–accuracy table: width, bits, sparsity threshold, expected bytes
    /// per frame, AP@0.5 (higher is better).
    public typealias Configuration = RateAccuracyEntry

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
    /// Measured bytes over the table's bytes for the current configuration (smoothed): the
    /// table's sizes are means over the test scenes, a given scene compresses better or worse.
    public private(set) var bytesScale = 1.0

    /// - Parameter configurations: ordered by accuracy or not; the cheapest is the fallback.
    public init(configurations: [Configuration]) {
        precondition(!configurations.isEmpty)
        self.configurations = configurations
        current = configurations.indices.max { configurations[$0].ap50 < configurations[$1].ap50 }!
    }

    public var configuration: Configuration { configurations[current] }

    /// Records the size of a frame sent at the current configuration.
    public mutating func observe(bytes: Int) {
        let r = Double(bytes) / configuration.bytes
        guard r.isFinite, r > 0 else { return }
        bytesScale += 0.2 * (min(max(r, 0.25), 4) - bytesScale)
    }

    /// Updates the choice from the latest estimate; returns the configuration to use next.
    /// - Parameter rttSeconds: the last frame's round-trip time; above the budget, the current
    ///   configuration counts as too big whatever the goodput estimate says (the direct evidence).
    public mutating func update(goodputBytesPerSecond g: Double?, queueingSeconds q: Double = 0, rttSeconds: Double = 0,
                                maxWidthIndex: Int = .max, maxBits: Int = 8) -> Configuration {
        guard let g, g > 0 else { return configuration }
        let budget = deadlineSeconds * (1 - margin) - encodeSeconds
        func allowed(_ c: Configuration) -> Bool { c.widthIndex <= maxWidthIndex && c.bits <= maxBits }
        func feasible(_ c: Configuration) -> Bool { allowed(c) && c.bytes * bytesScale / g <= budget }
        /// The most accurate configuration passing `ok` (fewer bytes on a tie), or nil.
        func mostAccurate(_ ok: (Configuration) -> Bool) -> Int? {
            var pick: Int?
            for i in configurations.indices where ok(configurations[i]) {
                guard let p = pick else { pick = i; continue }
                let a = configurations[i], b = configurations[p]
                if a.ap50 > b.ap50 || (a.ap50 == b.ap50 && a.bytes < b.bytes) { pick = i }
            }
            return pick
        }
        func cheapestAllowed() -> Int? {
            var pick: Int?
            for i in configurations.indices where allowed(configurations[i]) {
                if pick == nil || configurations[i].bytes < configurations[pick!].bytes { pick = i }
            }
            return pick
        }
        let best = mostAccurate(feasible) ?? cheapestAllowed() ?? current
        let saturated = q > saturatedQueueingSeconds || rttSeconds > budget
        if !feasible(configuration) {
            current = best  // down at once
            betterStreak = 0
        } else if saturated, configurations[best].bytes >= configuration.bytes {
            // The estimate says fine, the link says otherwise: the best smaller configuration.
            let cur = configuration.bytes
            current = mostAccurate { allowed($0) && $0.bytes < cur } ?? current
            betterStreak = 0
        } else if saturated {
            current = best
            betterStreak = 0
        } else if configurations[best].ap50 > configuration.ap50 {
            betterStreak += 1
            if betterStreak >= upAfter { current = best; betterStreak = 0 }
        } else {
            betterStreak = 0
        }
        return configuration
    }
}
