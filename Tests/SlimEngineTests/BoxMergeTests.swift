import Foundation
import Testing

@testable import SlimPerception

/// `BoxMerge`: two views of one car (0.6 m apart, scores 0.9 and 0.3, their axes 4° apart and on
/// either side of ±90°) and a second car 10 m away, seen once.
@Suite("Box merging: NMS against weighted means")
struct BoxMergeTests {
    static let a = BEVBox(x: 0, y: 0, length: 4.4, width: 1.8, yaw: .pi / 2 - 0.02, score: 0.9)
    static let b = BEVBox(x: 0.6, y: 0.2, length: 4.8, width: 2.0, yaw: -.pi / 2 - 0.02, score: 0.3)
    static let far = BEVBox(x: 10, y: 0, length: 4.5, width: 1.9, yaw: 0, score: 0.5)

    @Test func nmsKeepsTheBestView() {
        let out = BoxMerge.nms.merge([Self.b, Self.far, Self.a], nmsIoU: 0.1)
        #expect(out == [Self.a, Self.far])
    }

    @Test func weightedAveragesTheViewsOfOneObject() throws {
        let out = BoxMerge.weighted.merge([Self.b, Self.far, Self.a], nmsIoU: 0.1)
        try #require(out.count == 2, "\(out)")
        let m = out[0]
        // weights 0.9 and 0.3: three quarters of a, one quarter of b
        #expect(abs(m.x - 0.15) < 1e-5 && abs(m.y - 0.05) < 1e-5, "\(m)")
        #expect(abs(m.length - 4.5) < 1e-5 && abs(m.width - 1.85) < 1e-5, "\(m)")
        // b's heading is a's turned by π (one axis): the mean axis lies between theirs, 90° − 0.02 rad,
        // on a's side, not near 0
        #expect(abs(m.yaw - (.pi / 2 - 0.02)) < 1e-4, "\(m.yaw)")
        #expect(m.score == Self.a.score)
        #expect(out[1] == Self.far, "a box seen once stays as it is")
    }

    @Test func boxesThatOverlapLittleAreNotAveraged() {
        // IoU of a and a copy 3.5 m along its length: (4.4 − 3.5) / (4.4 + 3.5) ≈ 0.11 < 0.3
        let c = BEVBox(x: 0, y: 3.5, length: 4.4, width: 1.8, yaw: .pi / 2 - 0.02, score: 0.8)
        let out = RotatedIoU.weightedMean([Self.a], of: [Self.a, c], iou: BoxMerge.iou, nmsIoU: 0.5)
        #expect(out == [Self.a])
    }
}
