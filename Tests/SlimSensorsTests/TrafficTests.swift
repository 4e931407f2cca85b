import Foundation
import Testing

@testable import SlimSensors

/// Whether two boxes' footprints intersect, by their corners and edges (independent of the
/// separating-axes test the simulator uses).
private func intersect(_ a: SceneBox, _ b: SceneBox) -> Bool {
    func corners(_ x: SceneBox) -> [SIMD2<Double>] {
        let u = SIMD2(cos(x.yaw), sin(x.yaw)) * x.size.x / 2
        let v = SIMD2(-sin(x.yaw), cos(x.yaw)) * x.size.y / 2
        return [x.center + u + v, x.center - u + v, x.center - u - v, x.center + u - v]
    }
    func inside(_ p: SIMD2<Double>, _ x: SceneBox) -> Bool {
        let d = p - x.center
        let along = d.x * cos(x.yaw) + d.y * sin(x.yaw)
        let across = -d.x * sin(x.yaw) + d.y * cos(x.yaw)
        return abs(along) <= x.size.x / 2 && abs(across) <= x.size.y / 2
    }
    func cross(_ p: SIMD2<Double>, _ q: SIMD2<Double>, _ r: SIMD2<Double>) -> Double {
        (q.x - p.x) * (r.y - p.y) - (q.y - p.y) * (r.x - p.x)
    }
    let ca = corners(a)
    let cb = corners(b)
    if ca.contains(where: { inside($0, b) }) || cb.contains(where: { inside($0, a) }) { return true }
    for i in 0..<4 {
        for j in 0..<4 {
            let (p, q, r, s) = (ca[i], ca[(i + 1) % 4], cb[j], cb[(j + 1) % 4])
            if cross(p, q, r) * cross(p, q, s) < 0 && cross(r, s, p) * cross(r, s, q) < 0 { return true }
        }
    }
    return false
}

@Suite("Simulator traffic")
struct TrafficTests {
    /// The busiest held-out test scene: 30 vehicles (three of them connected) and a roadside unit,
    /// on 16 lane paths that share lanes before the intersection and cross in it.
    func busy() throws -> SceneConfig {
        try SceneConfig.load(file: repo.appendingPathComponent("training/scenes/test-int-busy.yaml").path)
    }

    @Test("no two vehicles ever overlap, and traffic keeps moving", arguments: [231 as UInt64, 232, 233, 7])
    func noOverlap(seed: UInt64) throws {
        let config = try busy()
        var rng = SimRandom(seed: seed)
        var world = World(config: config, rng: &rng)
        #expect(world.vehicles.count >= config.vehicles - 2, "traffic left out at the start: \(world.vehicles.count)")
        let start = world.vehicles.map(\.s)
        var overlaps = 0
        var stopped = 0
        for _ in 0..<Int(config.duration * config.rate) {
            let before = world.vehicles.map(\.s)
            world.step(1 / config.rate)
            stopped += zip(before, world.vehicles.map(\.s)).filter { $1 - $0 < 0.05 }.count
            let cars = world.boxes.filter { $0.trackID != nil }
            for i in cars.indices {
                for j in cars.indices where j > i && intersect(cars[i], cars[j]) { overlaps += 1 }
            }
        }
        #expect(overlaps == 0)
        // Queues form (some vehicle waits at some step) but do not lock the scene.
        let moved = zip(start, world.vehicles.map(\.s)).map { $1 - $0 }
        let speeds = world.vehicles.map(\.speed)
        let kept = zip(moved, speeds).filter { $0 >= 0.5 * $1 * config.duration }.count
        #expect(kept * 10 >= world.vehicles.count * 7, "moved: \(moved)")
        #expect(stopped > 0, "no vehicle ever waited")
    }

    @Test("the footprint test agrees with the corner test")
    func footprint() {
        func car(_ x: Double, _ y: Double, _ yaw: Double) -> SceneBox {
            SceneBox(center: SIMD2(x, y), size: SIMD3(4.5, 1.85, 1.5), yaw: yaw, kind: .vehicle(classID: 0, trackID: 1))
        }
        var rng = SimRandom(seed: 1)
        var both = 0
        for _ in 0..<2000 {
            let a = car(0, 0, rng.uniform(-.pi, .pi))
            let b = car(rng.uniform(-6, 6), rng.uniform(-6, 6), rng.uniform(-.pi, .pi))
            #expect(a.overlaps(b) == intersect(a, b))
            if a.overlaps(b) { both += 1 }
        }
        #expect(both > 200 && both < 1800)
        // A margin grows both boxes: 1 m apart bumper to bumper overlaps with 0.5 m margins.
        #expect(!car(0, 0, 0).overlaps(car(5.5, 0, 0)))
        #expect(car(0, 0, 0).overlaps(car(5.5, 0, 0), margin: 0.51))
    }
}
