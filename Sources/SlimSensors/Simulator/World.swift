import Foundation

/// Deterministic pseudo-random numbers (SplitMix64) with uniform and normal draws.
public struct SimRandom: Sendable {
    var state: UInt64
    public init(seed: UInt64) { state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 0x632B_E59B_D9B4_E019 }
    /// The generator at exactly `state` (no seed mixing): SplitMix64 as its reference states it.
    public init(state: UInt64) { self.state = state }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    public mutating func uniform() -> Double { Double(next() >> 11) / Double(1 << 53) }
    public mutating func uniform(_ lo: Double, _ hi: Double) -> Double { lo + (hi - lo) * uniform() }
    public mutating func normal() -> Double {
        let u1 = max(uniform(), 1e-12)
        let u2 = uniform()
        return (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
    }

    /// A standard normal draw from a fixed table of 65 536 quantiles (for per-point sensor
    /// noise, where Box–Muller would cost more than the ray cast).
    public mutating func fastNormal() -> Double { normalTable[Int(next() >> 48)] }
}

/// Quantiles of N(0, 1) at (k + 0.5) / 65 536, by inverting the CDF (Acklam's rational approximation).
let normalTable: [Double] = (0..<65_536).map { k in
    let p = (Double(k) + 0.5) / 65_536
    let a = [
        -3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
        -3.066479806614716e+01, 2.506628277459239e+00,
    ]
    let b = [
        -5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
        -1.328068155288572e+01,
    ]
    let c = [
        -7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
        4.374664141464968e+00, 2.938163982698783e+00,
    ]
    let d = [7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00]
    func tail(_ q: Double) -> Double {
        (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5])
            / ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    }
    if p < 0.02425 { return tail((-2 * log(p)).squareRoot()) }
    if p > 1 - 0.02425 { return -tail((-2 * log(1 - p)).squareRoot()) }
    let q = p - 0.5
    let r = q * q
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
}

/// An oriented box standing on the ground (z from 0 to its height).
public struct SceneBox: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        case vehicle(classID: Int, trackID: Int)
        case building
    }
    public var center: SIMD2<Double>
    /// Length (along `yaw`), width, height.
    public var size: SIMD3<Double>
    public var yaw: Double
    public var kind: Kind

    public var trackID: Int? { if case .vehicle(_, let t) = kind { t } else { nil } }
    public var classID: Int? { if case .vehicle(let c, _) = kind { c } else { nil } }

    /// The unit vector along the box's length.
    var heading: SIMD2<Double> { SIMD2(cos(yaw), sin(yaw)) }

    /// Whether the two boxes' footprints overlap when each is grown by `margin` on every side
    /// (separating axes of two oriented rectangles).
    func overlaps(_ o: SceneBox, margin: Double = 0) -> Bool {
        let a = (heading, SIMD2(-heading.y, heading.x))
        let b = (o.heading, SIMD2(-o.heading.y, o.heading.x))
        let ha = SIMD2(size.x, size.y) / 2 + margin
        let hb = SIMD2(o.size.x, o.size.y) / 2 + margin
        let d = o.center - center
        for axis in [a.0, a.1, b.0, b.1] {
            let ra = ha.x * abs((a.0 * axis).sum()) + ha.y * abs((a.1 * axis).sum())
            let rb = hb.x * abs((b.0 * axis).sum()) + hb.y * abs((b.1 * axis).sum())
            if abs((d * axis).sum()) > ra + rb { return false }
        }
        return true
    }

    /// The box grown forward (along its heading) by `gap`: the road it is about to drive on.
    func reaching(_ gap: Double) -> SceneBox {
        SceneBox(center: center + gap / 2 * heading, size: size + SIMD3(gap, 0, 0), yaw: yaw, kind: kind)
    }

    /// Whether the centre of `o` lies ahead of this box (along its heading).
    func hasInFront(_ o: SceneBox) -> Bool { ((o.center - center) * heading).sum() > 0 }
}

/// A lane-following path: a polyline with arc-length parametrization.
struct LanePath {
    let points: [SIMD2<Double>]
    let cumulative: [Double]
    var length: Double { cumulative.last! }

    init(_ points: [SIMD2<Double>]) {
        self.points = points
        var c = [0.0]
        for i in 1..<points.count {
            c.append(c[i - 1] + ((points[i] - points[i - 1]) * (points[i] - points[i - 1])).sum().squareRoot())
        }
        cumulative = c
    }

    /// Position and heading at arc length `s` (wrapped into the path).
    func at(_ s: Double) -> (SIMD2<Double>, Double) {
        var s = s.truncatingRemainder(dividingBy: length)
        if s < 0 { s += length }
        var lo = 0
        var hi = cumulative.count - 1
        while hi - lo > 1 {
            let mid = (lo + hi) / 2
            if cumulative[mid] <= s { lo = mid } else { hi = mid }
        }
        let seg = cumulative[hi] - cumulative[lo]
        let f = seg > 0 ? (s - cumulative[lo]) / seg : 0
        let d = points[hi] - points[lo]
        return (points[lo] + f * d, atan2(d.y, d.x))
    }
}

/// Vehicle classes: id, name, size (l, w, h), share of traffic.
let vehicleClasses: [(id: Int, name: String, size: SIMD3<Double>, share: Double)] = [
    (0, "car", SIMD3(4.5, 1.85, 1.5), 0.7), (0, "car", SIMD3(4.9, 2.0, 1.9), 0.15),
    (1, "truck", SIMD3(7.5, 2.4, 3.1), 0.1), (2, "bus", SIMD3(11.5, 2.55, 3.2), 0.05),
]

/// The simulated world: roads with lanes, buildings and parked cars that occlude, and moving
/// vehicles that follow lanes and turn at the intersection.
struct World {
    struct Vehicle {
        var path: Int
        var s: Double
        var speed: Double
        var size: SIMD3<Double>
        var classID: Int
        var trackID: Int
    }

    let config: SceneConfig
    var paths: [LanePath] = []
    var staticBoxes: [SceneBox] = []
    var vehicles: [Vehicle] = []
    var rsu: (position: SIMD2<Double>, yaw: Double)?
    var time = 0.0

    /// Half-width of a road (all lanes of both directions).
    var halfWidth: Double { Double(config.lanesPerDirection) * config.laneWidth }

    init(config: SceneConfig, rng: inout SimRandom) {
        self.config = config
        buildPaths()
        placeStatic(&rng)
        placeVehicles(&rng)
        if config.roadsideUnit {
            let c = halfWidth + 2.5
            rsu = config.kind == .intersection ? (SIMD2(c, c), -3 * .pi / 4) : (SIMD2(0, c), -.pi / 2)
            if let deg = config.roadsideUnitYawDeg {
                // A random yaw draws from its own stream, so the rest of the scene stays as without it.
                var own = SimRandom(seed: rng.state ^ 0x5253_5559_4157)
                rsu!.yaw = deg.isNaN ? own.uniform(-.pi, .pi) : deg * .pi / 180
            }
        }
    }

    /// Lanes: for heading h (unit vector), lane i lies to the right of the centre line.
    private func laneLine(heading: SIMD2<Double>, lane i: Int) -> (start: SIMD2<Double>, dir: SIMD2<Double>) {
        let right = SIMD2(heading.y, -heading.x)
        let offset = (Double(i) + 0.5) * config.laneWidth
        return (-config.roadLength / 2 * heading + offset * right, heading)
    }

    private mutating func buildPaths() {
        let L = config.roadLength
        let W = halfWidth
        let headings: [SIMD2<Double>] =
            config.kind == .intersection
            ? [SIMD2(1, 0), SIMD2(-1, 0), SIMD2(0, 1), SIMD2(0, -1)] : [SIMD2(1, 0), SIMD2(-1, 0)]
        for h in headings {
            for lane in 0..<config.lanesPerDirection {
                let (start, dir) = laneLine(heading: h, lane: lane)
                paths.append(LanePath(stride(from: 0.0, through: L, by: 2).map { start + $0 * dir }))
                guard config.kind == .intersection else { continue }
                // Turns: rightmost lane turns right, leftmost lane turns left.
                let right = SIMD2(h.y, -h.x)
                for (turnDir, turnLane) in [(right, 0), (-right, config.lanesPerDirection - 1)] where lane == turnLane {
                    let (exitStart, exitDir) = laneLine(heading: turnDir, lane: turnLane)
                    // Entry where the lane meets the intersection square, exit where the new lane leaves it.
                    let tIn = (L / 2 - W)
                    let entry = start + tIn * dir
                    let exitPoint = exitStart + (L / 2 + W) * exitDir
                    // Control point: where the two lane lines cross.
                    let denom = dir.x * exitDir.y - dir.y * exitDir.x
                    let k = ((exitStart.x - start.x) * exitDir.y - (exitStart.y - start.y) * exitDir.x) / denom
                    let control = start + k * dir
                    var pts = stride(from: 0.0, through: tIn, by: 2).map { start + $0 * dir }
                    for j in 1...12 {
                        let t = Double(j) / 12
                        pts.append((1 - t) * (1 - t) * entry + 2 * (1 - t) * t * control + t * t * exitPoint)
                    }
                    pts += stride(from: L / 2 + W + 2, through: L, by: 2).map { exitStart + $0 * exitDir }
                    paths.append(LanePath(pts))
                }
            }
        }
    }

    private func onRoad(_ p: SIMD2<Double>, margin: Double) -> Bool {
        let w = halfWidth + margin
        return abs(p.y) < w || (config.kind == .intersection && abs(p.x) < w)
    }

    private mutating func placeStatic(_ rng: inout SimRandom) {
        let L = config.roadLength
        let W = halfWidth
        var placed = 0
        var attempts = 0
        while placed < config.buildings && attempts < config.buildings * 50 {
            attempts += 1
            let size = SIMD3(rng.uniform(8, 22), rng.uniform(8, 18), rng.uniform(6, 22))
            let c = SIMD2(rng.uniform(-L / 2.5, L / 2.5), rng.uniform(-L / 2.5, L / 2.5))
            let r = max(size.x, size.y) / 2
            guard !onRoad(c, margin: 4 + r) else { continue }
            if staticBoxes.contains(where: {
                (($0.center - c) * ($0.center - c)).sum().squareRoot() < r + max($0.size.x, $0.size.y) / 2
            }) {
                continue
            }
            staticBoxes.append(SceneBox(center: c, size: size, yaw: 0, kind: .building))
            placed += 1
        }
        for k in 0..<config.parkedCars {
            let side: Double = k % 2 == 0 ? 1 : -1
            let alongX = config.kind == .straight || k % 4 < 2
            var t = rng.uniform(-L / 2.5, L / 2.5)
            if config.kind == .intersection, abs(t) < W + 6 { t += t < 0 ? -(W + 6) : (W + 6) }
            let offset = side * (W + 1.3)
            let c = alongX ? SIMD2(t, offset) : SIMD2(offset, t)
            let car = SceneBox(
                center: c, size: SIMD3(4.5, 1.85, 1.5), yaw: alongX ? 0 : .pi / 2,
                kind: .vehicle(classID: 0, trackID: 1000 + k))
            // Two parked cars never share a space: a car that would is left out (after its draw,
            // so the rest of the scene is the same).
            guard !staticBoxes.contains(where: { $0.trackID != nil && car.overlaps($0, margin: 0.5) }) else { continue }
            staticBoxes.append(car)
        }
    }

    private mutating func placeVehicles(_ rng: inout SimRandom) {
        var perPath = [Int](repeating: 0, count: paths.count)
        let order = (0..<config.vehicles).map { $0 % paths.count }
        for p in order { perPath[p] += 1 }
        let speeds = paths.indices.map { _ in rng.uniform(7, 13) }
        var seen = [Int](repeating: 0, count: paths.count)
        for (i, p) in order.enumerated() {
            let u = rng.uniform()
            var cls = vehicleClasses[0]
            var acc = 0.0
            for c in vehicleClasses {
                acc += c.share
                if u < acc {
                    cls = c
                    break
                }
            }
            let spacing = paths[p].length / Double(perPath[p])
            var s = (Double(seen[p]) + rng.uniform(0, 0.3)) * spacing
            seen[p] += 1
            let speed = speeds[p] * rng.uniform(0.97, 1.03)
            if i < config.agents {
                // Connected vehicles pass the scene's centre half way through the recording.
                let centre = paths[p].length / 2
                s = centre - speed * config.duration / 2 + Double(i) * 6
                cls = vehicleClasses[0]
            }
            var v = Vehicle(path: p, s: s, speed: speed, size: cls.size, classID: cls.id, trackID: i + 1)
            // No two vehicles start in one space (paths share lanes before the intersection and
            // cross in it): one that would overlap a vehicle placed before it starts further back
            // on its path. Connected vehicles come first and always find a space; other traffic
            // is left out if 40 m back is not enough (after its draws: the rest of the scene is
            // the same).
            func free(_ v: Vehicle) -> Bool {
                let b = box(of: v)
                return !vehicles.contains { box(of: $0).overlaps(b, margin: World.startGap) }
            }
            var back = 0
            while !free(v), i < config.agents || back < 40 {
                v.s -= 1
                back += 1
            }
            guard free(v) else { continue }
            vehicles.append(v)
        }
    }

    /// The gap kept to the vehicle ahead (m, bumper to bumper), and between vehicles at the start.
    static let followGap = 2.0
    static let startGap = 1.0

    /// Advances every vehicle along its path by up to `speed * dt`, as far as it can without
    /// coming within `followGap` of a vehicle in front of it or touching any vehicle: traffic
    /// queues behind a slower or stopped vehicle and waits for crossing traffic in the intersection
    /// instead of driving through it. Vehicles move one after another, each against the others'
    /// latest boxes, so no two boxes ever overlap (the ground truth is a scene that could exist).
    /// Where two vehicles each have the other in front of them (crossing paths), the one that
    /// came first in the scene goes first. Deterministic.
    mutating func step(_ dt: Double) {
        time += dt
        var boxes = vehicles.map(box(of:))
        for i in vehicles.indices {
            let d = vehicles[i].speed * dt
            var advance = d
            if !clear(i, advance: d, boxes) {
                // The largest advance that is clear, to 1/64 of a step.
                var lo = 0.0
                var hi = d
                for _ in 0..<6 {
                    let m = (lo + hi) / 2
                    if clear(i, advance: m, boxes) { lo = m } else { hi = m }
                }
                advance = lo
            }
            vehicles[i].s += advance
            boxes[i] = box(of: vehicles[i])
        }
    }

    /// Whether vehicle `i`, advanced by `d`, touches no other vehicle (0.25 m apart at least) and
    /// keeps `followGap` to every vehicle in front of it.
    private func clear(_ i: Int, advance d: Double, _ boxes: [SceneBox]) -> Bool {
        var v = vehicles[i]
        v.s += d
        let b = box(of: v)
        let reach = b.reaching(World.followGap)
        for j in boxes.indices where j != i {
            let o = boxes[j]
            if b.overlaps(o, margin: 0.125) { return false }
            guard b.hasInFront(o), reach.overlaps(o) else { continue }
            // Each in front of the other (crossing): the vehicle that came first in the scene goes.
            if i < j, o.hasInFront(b), o.reaching(World.followGap).overlaps(b) { continue }
            return false
        }
        return true
    }

    func box(of v: Vehicle) -> SceneBox {
        let (p, yaw) = paths[v.path].at(v.s)
        return SceneBox(center: p, size: v.size, yaw: yaw, kind: .vehicle(classID: v.classID, trackID: v.trackID))
    }

    /// Every box in the world now: moving vehicles, parked cars, buildings.
    var boxes: [SceneBox] { vehicles.map(box(of:)) + staticBoxes }
}
