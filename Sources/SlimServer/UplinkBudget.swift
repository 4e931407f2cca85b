import Foundation
import SlimCore
import SlimEngine
import SlimPerception

/// Shares a region's uplink budget between agents in proportion to what each contributes, and
/// turns each share into a cap (`Control`: largest width index and bit depth).
///
/// Contribution is coverage: every cell of an agent's grid (its ±`halfExtent` square at `cell`
/// resolution, placed by its pose) is credited 1/k, where k is the number of agents whose square
/// contains that cell's centre. An agent that alone sees a stretch of road earns all of it; agents
/// that see the same road split it. An agent's share of the budget is its credit over the total.
/// The cap is the table configuration (every cell sent) with the best AP@0.5 whose bytes × frame
/// rate fit the share — or the cheapest one when none does; the agent's own controller then
/// chooses within the cap (widths and depths below it are smaller, in this model family).
public struct UplinkBudget: Sendable {
    public struct Agent: Sendable {
        public var id: String
        public var position: SIMD2<Float>
        public var yaw: Float
        /// Frames per second the agent sends.
        public var rateHz: Double
        public init(id: String, position: SIMD2<Float>, yaw: Float, rateHz: Double) {
            self.id = id
            self.position = position
            self.yaw = yaw
            self.rateHz = rateHz
        }
    }

    public struct Cap: Sendable, Equatable {
        public var maxWidthIndex: Int
        public var maxBits: Int
        /// The agent's share of the budget, bit/s.
        public var shareBitsPerSecond: Double
        /// The share of the coverage credit (0…1).
        public var credit: Double
    }

    public var bitsPerSecond: Double
    public var table: [RateAccuracyEntry]
    public var halfExtent: Float = 32
    public var cell: Float = 2

    public init(bitsPerSecond: Double, table: [RateAccuracyEntry]) {
        precondition(!table.isEmpty)
        self.bitsPerSecond = bitsPerSecond
        self.table = table
    }

    /// Caps for every agent, by id.
    public func caps(for agents: [Agent]) -> [String: Cap] {
        guard !agents.isEmpty else { return [:] }
        let n = Int((2 * halfExtent / cell).rounded())
        var credit = [Double](repeating: 0, count: agents.count)
        let poses = agents.map { Pose2D($0.position, yaw: $0.yaw) }
        for (a, pose) in poses.enumerated() {
            for i in 0..<n {
                for j in 0..<n {
                    // Cell centre in the agent's frame, then in the world.
                    let lx = (Float(j) + 0.5) * cell - halfExtent
                    let ly = (Float(i) + 0.5) * cell - halfExtent
                    let w = pose.toCommon(SIMD2(lx, ly))
                    var k = 0
                    for o in poses {
                        let l = o.toLocal(w)
                        if abs(l.x) <= halfExtent, abs(l.y) <= halfExtent { k += 1 }
                    }
                    credit[a] += 1 / Double(max(k, 1))
                }
            }
        }
        let total = credit.reduce(0, +)
        let dense = table.filter { $0.threshold == 0 }
        let candidates = dense.isEmpty ? table : dense
        let cheapest = candidates.min { $0.bytes < $1.bytes }!
        var out: [String: Cap] = [:]
        for (a, ag) in agents.enumerated() {
            let share = bitsPerSecond * credit[a] / total
            let rate = max(ag.rateHz, 0.1)
            let fits = candidates.filter { $0.bytes * 8 * rate <= share }
            let pick = fits.max { $0.ap50 < $1.ap50 || ($0.ap50 == $1.ap50 && $0.bytes > $1.bytes) } ?? cheapest
            out[ag.id] = Cap(
                maxWidthIndex: pick.widthIndex, maxBits: pick.bits, shareBitsPerSecond: share, credit: credit[a] / total
            )
        }
        return out
    }
}
