import SlimEngine
import SlimPerception

/// Chooses width, bit depth and sparsity so that each frame arrives before its deadline at the
/// best accuracy the link allows.
///
/// A configuration is feasible when its expected encode time plus bytes ÷ goodput (bytes from
/// the model's table, scaled by how the recent frames compared with it) fits the deadline minus a
/// margin. Among feasible ones the controller prefers the highest accuracy of the model's
/// rate–accuracy table. It steps down at once when the current configuration stops being feasible,
/// when queueing delay shows the link is saturated, or when the last round trip alone exceeds the
/// budget. It steps up only after a better configuration has been feasible for `upAfter`
/// consecutive frames, and then by at most `maxStepUp` times the current bytes: goodput measured
/// with small frames overstates what big ones get (token-bucket bursts), so the probe is gentle. A
/// probe that fails (down again within `probeFrames` frames) puts a ceiling at its size for
/// `upAfter` × 2^k frames (k ≤ 4 consecutive failures) — exponential back-off, as TCP does for
/// retransmissions — or until the goodput estimate has stayed twice as high for `upAfter` frames. Server caps (`Control`) bound every choice. Choosing is arithmetic on a
/// small table: no allocation.
///
/// Below the cheapest map is the boxes rung (`fallsToBoxes`): when even the cheapest allowed
/// configuration does not fit (or the link is saturated while it is sent), the agent sends its
/// own detections instead (`sendsBoxes`), a few hundred bytes. It goes back to maps once the
/// cheapest has been feasible for `upAfter` consecutive frames (`upAfter` × 2^k after k quick
/// returns to boxes, k ≤ 2: the estimate from small Boxes messages overstates the link, so a
/// probe often fails, but one costs a frame or two; a longer back-off would keep an agent on boxes
/// for many seconds after its link came back).
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
    /// Largest step up, as a ratio of expected bytes.
    public var maxStepUp = 2.5
    /// A step up that is undone within this many frames counts as a failed probe.
    public var probeFrames = 5
    /// Queueing delay beyond which the link counts as saturated.
    public var saturatedQueueingSeconds = 0.03
    public private(set) var current: Int
    private var betterStreak = 0
    /// Measured bytes over the table's bytes for the current configuration (smoothed): the
    /// table's sizes are means over the test scenes, a given scene compresses better or worse.
    public private(set) var bytesScale = 1.0
    /// After a failed probe: configurations of at least these bytes are not probed for
    /// `ceilingFrames` more frames.
    public private(set) var ceilingBytes = Double.infinity
    private var ceilingFrames = 0
    /// The goodput estimate when the probe failed: an estimate twice as high lifts the ceiling.
    private var ceilingGoodput = 0.0
    private var betterLink = 0
    private var failures = 0
    private var sinceUp = Int.max
    /// Whether the boxes rung is below the cheapest map.
    public var fallsToBoxes = false
    /// True while the agent should send its own detections (Boxes) rather than a map.
    public private(set) var sendsBoxes = false
    private var boxesStreak = 0, boxesFailures = 0, sinceMaps = Int.max

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
    public mutating func update(
        goodputBytesPerSecond g: Double?, queueingSeconds q: Double = 0, rttSeconds: Double = 0,
        maxWidthIndex: Int = .max, maxBits: Int = 8
    ) -> Configuration {
        guard let g, g > 0 else { return configuration }
        if sinceUp < Int.max { sinceUp += 1 }
        if ceilingFrames > 0 {
            ceilingFrames -= 1
            betterLink = g > 2 * ceilingGoodput ? betterLink + 1 : 0
            if betterLink >= upAfter {
                ceilingFrames = 0
                failures = 0
            }  // the link got better, and stays so
            if ceilingFrames == 0 { ceilingBytes = .infinity }
        }
        let budget = deadlineSeconds * (1 - margin) - encodeSeconds
        func allowed(_ c: Configuration) -> Bool { c.widthIndex <= maxWidthIndex && c.bits <= maxBits }
        func feasible(_ c: Configuration) -> Bool { allowed(c) && c.bytes * bytesScale / g <= budget }
        /// The most accurate configuration passing `ok` (fewer bytes on a tie), or nil.
        func mostAccurate(_ ok: (Configuration) -> Bool) -> Int? {
            var pick: Int?
            for i in configurations.indices where ok(configurations[i]) {
                guard let p = pick else {
                    pick = i
                    continue
                }
                let a = configurations[i]
                let b = configurations[p]
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
        if sendsBoxes {
            // Back to maps once the cheapest fits, and has for long enough.
            if let c = cheapestAllowed(), feasible(configurations[c]), q <= saturatedQueueingSeconds {
                boxesStreak += 1
                if boxesStreak >= upAfter << min(boxesFailures, 2) {
                    sendsBoxes = false
                    boxesStreak = 0
                    current = c
                    sinceMaps = 0
                    betterStreak = 0
                }
            } else {
                boxesStreak = 0
            }
            return configuration
        }
        if sinceMaps < Int.max { sinceMaps += 1 }
        let cur = configuration.bytes
        let saturated = q > saturatedQueueingSeconds || rttSeconds > budget
        if !feasible(configuration) || saturated {
            // Down at once: the best feasible configuration smaller than this one (or the cheapest).
            let down = mostAccurate { feasible($0) && $0.bytes < cur } ?? cheapestAllowed() ?? current
            if fallsToBoxes, !feasible(configurations[down]) || (down == current && saturated) {
                // Not even the cheapest map fits: the boxes rung.
                if sinceMaps <= probeFrames { boxesFailures += 1 } else if sinceMaps != Int.max { boxesFailures = 0 }
                sendsBoxes = true
                boxesStreak = 0
                current = down
                betterStreak = 0
                sinceUp = Int.max
                return configuration
            }
            if configurations[down].bytes < cur {
                if sinceUp <= probeFrames {  // the last step up did not hold: back off
                    failures += 1
                    ceilingBytes = cur
                    ceilingFrames = upAfter << min(failures, 4)
                    betterLink = 0
                    ceilingGoodput = g
                }
                current = down
                sinceUp = Int.max
            }
            betterStreak = 0
            return configuration
        }
        if sinceUp != Int.max, sinceUp > probeFrames { failures = 0 }
        // Up, gently: within maxStepUp of the current size and under the ceiling of a failed probe.
        let (step, ceiling) = (cur * maxStepUp, ceilingBytes)
        if let up = mostAccurate({ feasible($0) && $0.bytes <= step && $0.bytes < ceiling }),
            configurations[up].ap50 > configuration.ap50
        {
            betterStreak += 1
            if betterStreak >= upAfter {
                current = up
                betterStreak = 0
                sinceUp = 0
            }
        } else {
            betterStreak = 0
        }
        return configuration
    }
}
