import Foundation

/// Elementwise and channel operators on NHWC float tensors. Each writes into `y`, which is
/// reshaped to the result (it must have the capacity); `y` may be `x` where the shapes agree.
public enum Ops {
    public static func activation(_ x: FloatTensor, _ act: Activation, into y: FloatTensor) {
        y.reshape(height: x.height, width: x.width, channels: x.channels)
        for i in 0..<x.count { y.storage[i] = act.apply(x.storage[i]) }
    }

    public static func sigmoid(_ x: FloatTensor, into y: FloatTensor) {
        y.reshape(height: x.height, width: x.width, channels: x.channels)
        for i in 0..<x.count { y.storage[i] = 1 / (1 + exp(-x.storage[i])) }
    }

    public static func add(_ a: FloatTensor, _ b: FloatTensor, into y: FloatTensor) {
        precondition(a.count == b.count && a.channels == b.channels)
        y.reshape(height: a.height, width: a.width, channels: a.channels)
        for i in 0..<a.count { y.storage[i] = a.storage[i] + b.storage[i] }
    }

    public static func maximum(_ a: FloatTensor, _ b: FloatTensor, into y: FloatTensor) {
        precondition(a.count == b.count && a.channels == b.channels)
        y.reshape(height: a.height, width: a.width, channels: a.channels)
        for i in 0..<a.count { y.storage[i] = max(a.storage[i], b.storage[i]) }
    }

    /// Concatenation along channels.
    public static func concat(_ parts: [FloatTensor], into y: FloatTensor) {
        let h = parts[0].height
        let w = parts[0].width
        let c = parts.reduce(0) { $0 + $1.channels }
        y.reshape(height: h, width: w, channels: c)
        var offset = 0
        for p in parts {
            precondition(p.height == h && p.width == w)
            for i in 0..<(h * w) {
                (y.pointer + i * c + offset).update(from: p.pointer + i * p.channels, count: p.channels)
            }
            offset += p.channels
        }
    }

    /// Max pooling; padding cells are −∞ (never selected).
    public static func maxPool(
        _ x: FloatTensor, kernel: (Int, Int), stride: (Int, Int), padding: (Int, Int), into y: FloatTensor
    ) {
        let g = ConvGeometry(kernel: kernel, stride: stride, padding: padding)
        let (oh, ow) = g.outputSize(height: x.height, width: x.width)
        let c = x.channels
        y.reshape(height: oh, width: ow, channels: c)
        for oy in 0..<oh {
            let (iy0, k0y, k1y) = g.taps(
                oy, stride: stride.0, pad: padding.0, dilation: 1, kernel: kernel.0, size: x.height)
            for ox in 0..<ow {
                let (ix0, k0x, k1x) = g.taps(
                    ox, stride: stride.1, pad: padding.1, dilation: 1, kernel: kernel.1, size: x.width)
                let dst = y.pointer + (oy * ow + ox) * c
                for ch in 0..<c { dst[ch] = -.infinity }
                for ky in k0y..<k1y {
                    for kx in k0x..<k1x {
                        let src = x.pointer + ((iy0 + ky) * x.width + ix0 + kx) * c
                        for ch in 0..<c { dst[ch] = max(dst[ch], src[ch]) }
                    }
                }
            }
        }
    }

    /// Nearest-neighbour upsampling by an integer factor (PyTorch `mode="nearest"`).
    public static func upsampleNearest(_ x: FloatTensor, scale: Int, into y: FloatTensor) {
        let oh = x.height * scale
        let ow = x.width * scale
        let c = x.channels
        y.reshape(height: oh, width: ow, channels: c)
        for oy in 0..<oh {
            for ox in 0..<ow {
                (y.pointer + (oy * ow + ox) * c).update(
                    from: x.pointer + ((oy / scale) * x.width + ox / scale) * c, count: c)
            }
        }
    }

    /// Softmax over the channels of each cell.
    public static func softmaxChannels(_ x: FloatTensor, into y: FloatTensor) {
        let c = x.channels
        y.reshape(height: x.height, width: x.width, channels: c)
        for i in 0..<(x.height * x.width) {
            let src = x.pointer + i * c
            let dst = y.pointer + i * c
            var m = -Float.infinity
            for ch in 0..<c { m = max(m, src[ch]) }
            var sum: Float = 0
            for ch in 0..<c {
                let e = exp(src[ch] - m)
                dst[ch] = e
                sum += e
            }
            for ch in 0..<c { dst[ch] /= sum }
        }
    }
}
