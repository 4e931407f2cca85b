import Foundation

/// A rotating multi-beam LiDAR, ray-cast against the ground plane and the scene's boxes.
///
/// Culling makes it fast: per sweep, each box is binned by the azimuth interval it covers as
/// seen from the sensor, so a ray tests only the few boxes in its azimuth bin.
struct LidarSweep {
    let lidar: SceneConfig.Lidar
    let elevations: [Double]
    let azimuths: Int
    private var bins: [[Int32]]
    private var prepared: [PreparedBox] = []
    let cosEl: [Double], sinEl: [Double]

    init(lidar: SceneConfig.Lidar) {
        self.lidar = lidar
        let elevations: [Double] = (0..<lidar.beams).map { b in
            let f = lidar.beams == 1 ? 0.5 : Double(b) / Double(lidar.beams - 1)
            return (lidar.verticalFOV.lower + f * (lidar.verticalFOV.upper - lidar.verticalFOV.lower)) * .pi / 180
        }
        self.elevations = elevations
        cosEl = elevations.map { cos($0) }
        sinEl = elevations.map { sin($0) }
        azimuths = max(1, Int((360 / lidar.azimuthResolution).rounded()))
        bins = Array(repeating: [], count: azimuths)
    }

    /// One sweep from `origin` (sensor position, z = height) with heading `yaw`. Points are in
    /// the sensor frame: x forward, y left, z up. `hits[i]` counts the points on `boxes[i]`.
    mutating func sweep(
        origin: SIMD3<Double>, yaw: Double, boxes: [SceneBox], exclude: Int?, rng: inout SimRandom,
        points: inout [SIMD4<Float>], hits: inout [Int]
    ) {
        points.removeAll(keepingCapacity: true)
        hits = [Int](repeating: 0, count: boxes.count)
        for i in bins.indices { bins[i].removeAll(keepingCapacity: true) }
        let step = 2 * Double.pi / Double(azimuths)
        let o2 = SIMD2(origin.x, origin.y)
        for (bi, b) in boxes.enumerated() where bi != exclude {
            let rel = b.center - o2
            let dist = (rel * rel).sum().squareRoot()
            let radius = 0.5 * (b.size.x * b.size.x + b.size.y * b.size.y).squareRoot()
            guard dist - radius < lidar.range else { continue }
            if dist <= radius {  // sensor inside the footprint's circle: every azimuth
                for a in 0..<azimuths { bins[a].append(Int32(bi)) }
                continue
            }
            let centre = atan2(rel.y, rel.x) - yaw
            let half = asin(min(1, radius / dist))
            let a0 = Int(((centre - half) / step).rounded(.down))
            let a1 = Int(((centre + half) / step).rounded(.up))
            for a in a0...a1 { bins[((a % azimuths) + azimuths) % azimuths].append(Int32(bi)) }
        }
        // Per-box transforms, computed once per sweep.
        prepared.removeAll(keepingCapacity: true)
        for b in boxes {
            prepared.append(
                PreparedBox(
                    cx: b.center.x, cy: b.center.y, c: cos(-b.yaw), s: sin(-b.yaw),
                    hx: b.size.x / 2, hy: b.size.y / 2, h: b.size.z))
        }
        let cyaw = cos(yaw)
        let syaw = sin(yaw)
        let range = lidar.range
        for a in 0..<azimuths {
            let az = Double(a) * step
            let ca = cos(az)
            let sa = sin(az)
            let dxw = cyaw * ca - syaw * sa
            let dyw = syaw * ca + cyaw * sa  // world direction of this azimuth
            let candidates = bins[a]
            for e in 0..<elevations.count {
                let ce = cosEl[e]
                let se = sinEl[e]
                let dir = SIMD3(ce * dxw, ce * dyw, se)
                var best = range
                var hit = -1
                if se < 0 {
                    let t = -origin.z / se
                    if t < best { best = t }
                }
                for bi in candidates {
                    let t = Self.intersect(origin, dir, prepared[Int(bi)], limit: best)
                    if t < best {
                        best = t
                        hit = Int(bi)
                    }
                }
                guard best < range else { continue }
                if lidar.dropout > 0, rng.uniform() < lidar.dropout { continue }
                let r = best + lidar.rangeNoise * rng.fastNormal()
                let intensity: Double = hit < 0 ? 0.12 : (boxes[hit].trackID != nil ? 0.55 : 0.35)
                if hit >= 0 { hits[hit] += 1 }
                points.append(
                    SIMD4(
                        Float(r * ce * ca), Float(r * ce * sa), Float(r * se),
                        Float(max(0, intensity + 0.03 * rng.fastNormal()))))
            }
        }
    }

    struct PreparedBox {
        var cx, cy, c, s, hx, hy, h: Double
    }

    /// Distance along the ray to an oriented box standing on the ground, or `limit` when there
    /// is no hit closer than it (slab test in the box's frame).
    @inline(__always)
    static func intersect(_ o: SIMD3<Double>, _ d: SIMD3<Double>, _ b: PreparedBox, limit: Double) -> Double {
        let px = o.x - b.cx
        let py = o.y - b.cy
        let ox = b.c * px - b.s * py
        let oy = b.s * px + b.c * py
        let dx = b.c * d.x - b.s * d.y
        let dy = b.s * d.x + b.c * d.y
        var t0 = 1e-6
        var t1 = limit
        if abs(dx) < 1e-12 {
            if ox < -b.hx || ox > b.hx { return limit }
        } else {
            let inv = 1 / dx
            var a = (-b.hx - ox) * inv
            var c = (b.hx - ox) * inv
            if a > c { swap(&a, &c) }
            t0 = max(t0, a)
            t1 = min(t1, c)
            if t0 > t1 { return limit }
        }
        if abs(dy) < 1e-12 {
            if oy < -b.hy || oy > b.hy { return limit }
        } else {
            let inv = 1 / dy
            var a = (-b.hy - oy) * inv
            var c = (b.hy - oy) * inv
            if a > c { swap(&a, &c) }
            t0 = max(t0, a)
            t1 = min(t1, c)
            if t0 > t1 { return limit }
        }
        if abs(d.z) < 1e-12 {
            if o.z < 0 || o.z > b.h { return limit }
        } else {
            let inv = 1 / d.z
            var a = (0 - o.z) * inv
            var c = (b.h - o.z) * inv
            if a > c { swap(&a, &c) }
            t0 = max(t0, a)
            t1 = min(t1, c)
            if t0 > t1 { return limit }
        }
        return t0
    }
}
