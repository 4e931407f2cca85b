/// Warps a feature map by a 2×3 affine matrix, with the semantics of PyTorch
/// `grid_sample(x, affine_grid(theta, size, align_corners=False), mode="bilinear",
/// padding_mode="zeros", align_corners=False)`: output cell (i, j) samples the input at
/// θ·(x_n, y_n, 1), where x_n = (2j+1)/W − 1 and y_n = (2i+1)/H − 1 are normalized coordinates;
/// samples outside the input read zeros. The server uses it to bring each agent's features into
/// the fusion frame.
public enum PoseWarp {
    /// - Parameters:
    ///   - theta: row-major [θ00, θ01, θ02, θ10, θ11, θ12].
    ///   - height, width: output size.
    public static func warp(_ x: FloatTensor, theta: [Float], height oh: Int, width ow: Int, into y: FloatTensor) {
        precondition(theta.count == 6)
        let c = x.channels
        let ih = x.height
        let iw = x.width
        y.reshape(height: oh, width: ow, channels: c)
        if isIdentity(theta), ih == oh, iw == ow {
            // The identity (an ego's own map): every cell samples its own centre, a copy.
            _ = y.values.update(fromContentsOf: x.values)
            return
        }
        y.fill(0)
        forEachSample(theta: theta, height: oh, width: ow, inputHeight: ih, inputWidth: iw) { cell, x0, y0, wx1, wy1 in
            let wx0 = 1 - wx1
            let wy0 = 1 - wy1
            let dst = y.pointer + cell * c
            // The four bilinear corners (no per-cell arrays: this runs per cell on the server).
            for dy in 0..<2 {
                let yy = y0 + dy
                let wy = dy == 0 ? wy0 : wy1
                guard yy >= 0, yy < ih else { continue }
                for dx in 0..<2 {
                    let xx = x0 + dx
                    let wx = dx == 0 ? wx0 : wx1
                    guard xx >= 0, xx < iw else { continue }
                    let w = wy * wx
                    let src = x.pointer + (yy * iw + xx) * c
                    for ch in 0..<c { dst[ch] += w * src[ch] }
                }
            }
        }
    }

    /// Whether `theta` is the identity [1, 0, 0, 0, 1, 0]: a same-size warp by it is a copy.
    /// (Element by element: no array literal is allocated on the fusion path.)
    public static func isIdentity(_ theta: [Float]) -> Bool {
        theta.count == 6 && theta[0] == 1 && theta[1] == 0 && theta[2] == 0 && theta[3] == 0 && theta[4] == 1
            && theta[5] == 0
    }

    /// Calls `body(cell, x0, y0, wx1, wy1)` for every output cell (row-major index) that has a
    /// bilinear corner inside the input: its sample point is (x0 + wx1, y0 + wy1) in input pixel
    /// coordinates (column, row), x0 and y0 rounded down (either may be −1: that corner is outside).
    @inline(__always)
    static func forEachSample(
        theta: [Float], height oh: Int, width ow: Int, inputHeight ih: Int, inputWidth iw: Int,
        _ body: (_ cell: Int, _ x0: Int, _ y0: Int, _ wx1: Float, _ wy1: Float) -> Void
    ) {
        for i in 0..<oh {
            let yn = (2 * Float(i) + 1) / Float(oh) - 1
            for j in 0..<ow {
                let xn = (2 * Float(j) + 1) / Float(ow) - 1
                let gx = theta[0] * xn + theta[1] * yn + theta[2]
                let gy = theta[3] * xn + theta[4] * yn + theta[5]
                let fx = ((gx + 1) * Float(iw) - 1) / 2
                let fy = ((gy + 1) * Float(ih) - 1) / 2
                guard fx.isFinite, fy.isFinite, fx > -1, fy > -1, fx < Float(iw), fy < Float(ih) else { continue }
                let x0 = Int(fx.rounded(.down))
                let y0 = Int(fy.rounded(.down))
                body(i * ow + j, x0, y0, fx - Float(x0), fy - Float(y0))
            }
        }
    }

    /// The input cells `warp` reads for an output of `oh` × `ow`: `sources[k]` (one byte per input
    /// cell, `inputHeight` × `inputWidth`) is set to 1 for every in-bounds bilinear corner of every
    /// output cell's sample point, by the same arithmetic as `warp`, and to 0 elsewhere. Returns
    /// how many are set. A producer of the input need compute only these cells: `warp` gives the
    /// same output bit for bit whatever the others hold, as long as they are finite.
    @discardableResult
    public static func markSources(
        theta: [Float], height oh: Int, width ow: Int, inputHeight ih: Int, inputWidth iw: Int,
        into sources: UnsafeMutablePointer<UInt8>
    ) -> Int {
        precondition(theta.count == 6)
        sources.update(repeating: 0, count: ih * iw)
        forEachSample(theta: theta, height: oh, width: ow, inputHeight: ih, inputWidth: iw) { _, x0, y0, _, _ in
            for yy in max(y0, 0)...min(y0 + 1, ih - 1) {
                for xx in max(x0, 0)...min(x0 + 1, iw - 1) { sources[yy * iw + xx] = 1 }
            }
        }
        var n = 0
        for k in 0..<(ih * iw) { n += Int(sources[k]) }
        return n
    }
}
