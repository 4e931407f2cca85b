import Foundation
import SlimEngine

/// Geometry of a bird's-eye-view grid in an agent's frame. Column j covers
/// x ∈ [xMin + j·cell, xMin + (j+1)·cell) (x forward), row i covers y ∈ [yMin + i·cell, …)
/// (y left): so the grid's width axis is x and its height axis is y, which is also how the
/// server's affine warp (PyTorch `affine_grid` semantics) reads it.
public struct BEVGrid: Sendable, Equatable {
    public var xMin: Float = -32, xMax: Float = 32
    public var yMin: Float = -32, yMax: Float = 32
    /// Heights above the ground kept, metres.
    public var zMin: Float = -0.5, zMax: Float = 4.5
    public var cell: Float = 0.5

    public init() {}
    public var width: Int { Int(((xMax - xMin) / cell).rounded()) }
    public var height: Int { Int(((yMax - yMin) / cell).rounded()) }

    public static let channelNames = [
        "occupancy", "log_count", "max_height", "mean_height", "min_height", "height_spread",
        "mean_intensity", "above_ground_fraction",
    ]
    public static let channels = channelNames.count
}

/// Points → an 8-channel pillar grid (NHWC), one pass over the points and one over the cells.
/// Used by the agent at run time and by `slimsplit dataset export` for training alike, so the
/// model sees in training exactly what the agent computes.
///
/// Channels (heights are above the ground under the sensor, i.e. z + sensor height):
/// occupancy (0/1), log(1 + count), max height, mean height, min height, max − min, mean
/// intensity, fraction of points more than 0.3 m above the ground. Empty cells are all 0.
/// Heights are divided by `zMax` so every channel is about 0–1.
public final class BEVFeaturizer: @unchecked Sendable {
    public let grid: BEVGrid
    private var count: [Int32], sumZ: [Float], maxZ: [Float], minZ: [Float], sumI: [Float], above: [Int32]

    public init(grid: BEVGrid = BEVGrid()) {
        self.grid = grid
        let n = grid.width * grid.height
        count = .init(repeating: 0, count: n)
        sumZ = .init(repeating: 0, count: n)
        maxZ = .init(repeating: 0, count: n)
        minZ = .init(repeating: 0, count: n)
        sumI = .init(repeating: 0, count: n)
        above = .init(repeating: 0, count: n)
    }

    /// Writes the grid into `out` (reshaped to height × width × 8). Allocates nothing.
    public func featurize(_ points: UnsafeBufferPointer<SIMD4<Float>>, sensorHeight: Float, into out: FloatTensor) {
        let g = grid
        let w = g.width
        let h = g.height
        out.reshape(height: h, width: w, channels: BEVGrid.channels)
        let inv = 1 / g.cell
        count.withUnsafeMutableBufferPointer { count in
            sumZ.withUnsafeMutableBufferPointer { sumZ in
                maxZ.withUnsafeMutableBufferPointer { maxZ in
                    minZ.withUnsafeMutableBufferPointer { minZ in
                        sumI.withUnsafeMutableBufferPointer { sumI in
                            above.withUnsafeMutableBufferPointer { above in
                                count.update(repeating: 0)
                                sumZ.update(repeating: 0)
                                sumI.update(repeating: 0)
                                above.update(repeating: 0)
                                for p in points {
                                    let z = p.z + sensorHeight
                                    guard z >= g.zMin, z < g.zMax else { continue }
                                    let fx = (p.x - g.xMin) * inv
                                    let fy = (p.y - g.yMin) * inv
                                    guard fx >= 0, fy >= 0 else { continue }
                                    let j = Int(fx)
                                    let i = Int(fy)
                                    guard j < w, i < h else { continue }
                                    let c = i * w + j
                                    if count[c] == 0 {
                                        maxZ[c] = z
                                        minZ[c] = z
                                    } else {
                                        maxZ[c] = max(maxZ[c], z)
                                        minZ[c] = min(minZ[c], z)
                                    }
                                    count[c] += 1
                                    sumZ[c] += z
                                    sumI[c] += p.w
                                    if z > 0.3 { above[c] += 1 }
                                }
                                let o = out.pointer
                                let zs = 1 / g.zMax
                                for c in 0..<(w * h) {
                                    let d = o + c * 8
                                    let n = count[c]
                                    if n == 0 {
                                        for k in 0..<8 { d[k] = 0 }
                                        continue
                                    }
                                    let fn = Float(n)
                                    d[0] = 1
                                    d[1] = log1p(fn)
                                    d[2] = maxZ[c] * zs
                                    d[3] = sumZ[c] / fn * zs
                                    d[4] = minZ[c] * zs
                                    d[5] = (maxZ[c] - minZ[c]) * zs
                                    d[6] = sumI[c] / fn
                                    d[7] = Float(above[c]) / fn
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
