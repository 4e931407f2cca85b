import Foundation
import Testing

@testable import SlimPerception

/// `PoseAlignment` on six cars both agents see, the other agent's boxes displaced by a 0.6 m
/// position error and each box by its own ±0.1 m of detector noise, plus one car only it sees.
@Suite("Pose alignment: another agent's position from the objects both detect")
struct PoseAlignmentTests {
    static let cars: [SIMD2<Float>] = [[5, 3], [12, -4], [20, 6], [-8, 10], [-15, -3], [25, 20]]

    static func ours() -> [BEVBox] {
        cars.enumerated().map { i, c in
            BEVBox(x: c.x + (i % 2 == 0 ? 0.1 : -0.1), y: c.y, length: 4.5, width: 1.9, yaw: 0, score: 0.9)
        }
    }

    static func theirs(error: SIMD2<Float>) -> [BEVBox] {
        var out = cars.enumerated().map { i, c in
            BEVBox(x: c.x + error.x, y: c.y + error.y + (i % 3 == 0 ? 0.1 : -0.05), length: 4.5, width: 1.9, yaw: 0, score: 0.8)
        }
        out.append(BEVBox(x: 40 + error.x, y: -20 + error.y, length: 4.5, width: 1.9, yaw: 0, score: 0.9))
        out.append(BEVBox(x: 1, y: 1, length: 4.5, width: 1.9, yaw: 0, score: 0.1))  // not confident: not matched
        return out
    }

    @Test func recoversAPositionError() throws {
        let error = SIMD2<Float>(0.5, -0.33)
        let c = try #require(PoseAlignment().correction(ours: Self.ours(), theirs: Self.theirs(error: error)))
        #expect(c.matches == 6)
        let residual = c.shift + error
        #expect((residual * residual).sum().squareRoot() < 0.08, "shift \(c.shift) for an error \(error)")
    }

    @Test func leavesThePoseWhenNothingIsToBeTrusted() {
        let a = PoseAlignment()
        // Two shared cars are too few.
        #expect(a.correction(ours: Array(Self.ours().prefix(2)), theirs: Self.theirs(error: [0.5, 0])) == nil)
        // An error beyond the match radius finds no pairs; none is made up.
        #expect(a.correction(ours: Self.ours(), theirs: Self.theirs(error: [3.5, 0])) == nil)
        // Non-finite boxes are ignored, not averaged in.
        var bad = Self.theirs(error: [0.5, 0])
        bad[0].x = .nan
        let c = a.correction(ours: Self.ours(), theirs: bad)
        #expect(c?.matches == 5 && c.map { $0.shift.x.isFinite } == true)
    }
}
