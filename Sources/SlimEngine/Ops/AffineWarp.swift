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
        if theta[0] == 1, theta[1] == 0, theta[2] == 0, theta[3] == 0, theta[4] == 1, theta[5] == 0, ih == oh, iw == ow {
            // The identity (an ego's own map): every cell samples its own centre, a copy.
            _ = y.values.update(fromContentsOf: x.values)
            return
        }
        y.fill(0)
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
                let wx1 = fx - Float(x0)
                let wy1 = fy - Float(y0)
                let wx0 = 1 - wx1
                let wy0 = 1 - wy1
                let dst = y.pointer + (i * ow + j) * c
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
    }
}
