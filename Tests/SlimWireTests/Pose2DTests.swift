import Foundation
import SlimCore
import Testing

@Suite("Pose2D: the one 2-D transform")
struct Pose2DTests {
    @Test("into a frame and back is the identity; headings come out in (−π, π]")
    func roundTrip() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<1000 {
            let pose = Pose2D(
                x: Double.random(in: -100...100, using: &rng), y: Double.random(in: -100...100, using: &rng),
                yaw: Double.random(in: -10...10, using: &rng))
            let p = SIMD2(Double.random(in: -50...50, using: &rng), Double.random(in: -50...50, using: &rng))
            let back = pose.toLocal(pose.toCommon(p))
            #expect(abs(back.x - p.x) < 1e-9 && abs(back.y - p.y) < 1e-9)
            let h = pose.toLocal(heading: Double.random(in: -20...20, using: &rng))
            #expect(h > -Double.pi && h <= Double.pi)
        }
    }

    @Test("known values: a point ahead of a pose facing +y lies at +y in the common frame")
    func knownValues() {
        let pose = Pose2D<Float>(x: 10, y: 5, yaw: .pi / 2)
        let ahead = pose.toCommon(SIMD2(2, 0))
        #expect(abs(ahead.x - 10) < 1e-5 && abs(ahead.y - 7) < 1e-5)
        let local = pose.toLocal(SIMD2(10, 7))
        #expect(abs(local.x - 2) < 1e-5 && abs(local.y) < 1e-5)
        // The heading of the quaternion of a rotation by 0.3 rad about +z.
        let q = SIMD4<Double>(0, 0, sin(0.15), cos(0.15))
        #expect(abs(Pose2D<Double>.yaw(ofQuaternion: q) - 0.3) < 1e-12)
    }
}
