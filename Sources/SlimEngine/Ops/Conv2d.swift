import CKernels

/// Shape parameters of a 2-D convolution (PyTorch semantics, zero padding).
public struct ConvGeometry: Sendable, Equatable {
    public var kernel: (h: Int, w: Int)
    public var stride: (h: Int, w: Int) = (1, 1)
    public var padding: (h: Int, w: Int) = (0, 0)
    public var dilation: (h: Int, w: Int) = (1, 1)
    public var groups = 1

    public init(kernel: (Int, Int), stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0), dilation: (Int, Int) = (1, 1), groups: Int = 1) {
        self.kernel = (kernel.0, kernel.1)
        self.stride = (stride.0, stride.1)
        self.padding = (padding.0, padding.1)
        self.dilation = (dilation.0, dilation.1)
        self.groups = groups
    }

    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        ((height + 2 * padding.h - dilation.h * (kernel.h - 1) - 1) / stride.h + 1,
         (width + 2 * padding.w - dilation.w * (kernel.w - 1) - 1) / stride.w + 1)
    }

    /// Taps of output row `o` that fall inside an input of `size` rows: [first, end).
    @inline(__always)
    func taps(_ o: Int, stride s: Int, pad p: Int, dilation d: Int, kernel k: Int, size: Int) -> (Int, Int, Int) {
        let i0 = o * s - p
        var k0 = 0, k1 = k
        while k0 < k1 && i0 + k0 * d < 0 { k0 += 1 }
        while k1 > k0 && i0 + (k1 - 1) * d >= size { k1 -= 1 }
        return (i0, k0, k1)
    }

    public static func == (a: ConvGeometry, b: ConvGeometry) -> Bool {
        a.kernel == b.kernel && a.stride == b.stride && a.padding == b.padding && a.dilation == b.dilation && a.groups == b.groups
    }
}

public enum Activation: String, Sendable {
    case none, relu, relu6

    @inline(__always)
    func apply(_ v: SIMD16<Float>) -> SIMD16<Float> {
        switch self {
        case .none: v
        case .relu: v.replacing(with: 0, where: v .< 0)
        case .relu6: v.replacing(with: 0, where: v .< 0).replacing(with: 6, where: v .> 6)
        }
    }

    @inline(__always)
    func apply(_ v: Float) -> Float {
        switch self {
        case .none: v
        case .relu: max(v, 0)
        case .relu6: min(max(v, 0), 6)
        }
    }
}

/// A float convolution with its weights packed once for the kernel: per group, per tap, per
/// input channel, the output channels in chunks of 16 lanes (`SIMD16<Float>`), so the inner loop
/// is a broadcast and a multiply-add per chunk and vectorizes on any SIMD ISA. Where the CPU has
/// AVX-512, the same packed weights go to the FMA kernel of `CKernels`.
public final class FloatConv2d: @unchecked Sendable {
    /// Forces the portable Swift kernel (tests compare both paths).
    nonisolated(unsafe) public static var forcePortable = false

    public let geometry: ConvGeometry
    public let inChannels: Int
    public let outChannels: Int
    public let activation: Activation
    let inPerGroup: Int, outPerGroup: Int, chunks: Int
    let packed: UnsafeMutableBufferPointer<SIMD16<Float>>
    let bias: UnsafeMutableBufferPointer<SIMD16<Float>>
    let depthwise: Bool
    /// Zero-padded copy of the input for the AVX-512 kernel, so every output pixel takes the
    /// 4-pixel register-tile path (grown once to the largest input, then reused).
    private var padded: FloatTensor?

    /// - Parameters:
    ///   - weight: [out, in / groups, kh, kw] (PyTorch layout).
    ///   - bias: [out] or nil.
    public init(weight: [Float], bias: [Float]?, inChannels: Int, outChannels: Int, geometry g: ConvGeometry, activation: Activation = .none) {
        precondition(inChannels % g.groups == 0 && outChannels % g.groups == 0)
        geometry = g
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.activation = activation
        inPerGroup = inChannels / g.groups
        outPerGroup = outChannels / g.groups
        let kh = g.kernel.h, kw = g.kernel.w
        precondition(weight.count == outChannels * inPerGroup * kh * kw)
        depthwise = g.groups == inChannels && g.groups == outChannels && g.groups > 1
        if depthwise {
            // [tap][channel chunk]
            chunks = (outChannels + 15) / 16
            packed = .allocate(capacity: kh * kw * chunks)
            packed.initialize(repeating: .zero)
            for c in 0..<outChannels {
                for t in 0..<(kh * kw) { packed[t * chunks + c / 16][c % 16] = weight[c * kh * kw + t] }
            }
        } else {
            chunks = (outPerGroup + 15) / 16
            packed = .allocate(capacity: g.groups * kh * kw * inPerGroup * chunks)
            packed.initialize(repeating: .zero)
            for o in 0..<outChannels {
                let grp = o / outPerGroup, oc = o % outPerGroup
                for i in 0..<inPerGroup {
                    for t in 0..<(kh * kw) {
                        let idx = ((grp * kh * kw + t) * inPerGroup + i) * chunks + oc / 16
                        packed[idx][oc % 16] = weight[(o * inPerGroup + i) * kh * kw + t]
                    }
                }
            }
        }
        let biasChunks = depthwise ? chunks : g.groups * chunks
        self.bias = .allocate(capacity: biasChunks)
        self.bias.initialize(repeating: .zero)
        if let bias {
            for o in 0..<outChannels {
                if depthwise { self.bias[o / 16][o % 16] = bias[o] } else {
                    let grp = o / outPerGroup, oc = o % outPerGroup
                    self.bias[grp * chunks + oc / 16][oc % 16] = bias[o]
                }
            }
        }
    }

    deinit {
        packed.deallocate()
        bias.deallocate()
    }

    /// y = act(conv(x) + bias). `y` is reshaped to the output size (it must have the capacity).
    /// Outputs whose flag in `active` is 0 are set to `background` instead of computed.
    public func run(_ x: FloatTensor, into y: FloatTensor, active: UnsafePointer<UInt8>? = nil, background: UnsafePointer<Float>? = nil) {
        precondition(x.channels == inChannels)
        let g = geometry
        let (oh, ow) = g.outputSize(height: x.height, width: x.width)
        y.reshape(height: oh, width: ow, channels: outChannels)
        let xs = x.pointer, ys = y.pointer
        let inW = x.width, inH = x.height
        if !depthwise, !Self.forcePortable, slim_fconv_available() != 0 {
            var src = xs, ih = inH, iw = inW, ph = g.padding.h, pw = g.padding.w
            if ph > 0 || pw > 0 {
                let hh = inH + 2 * ph, ww = inW + 2 * pw
                if padded == nil || padded!.capacity < hh * ww * inChannels {
                    padded = FloatTensor(height: hh, width: ww, channels: inChannels)
                }
                let p = padded!
                p.reshape(height: hh, width: ww, channels: inChannels)
                p.fill(0)
                for r in 0..<inH {
                    (p.pointer + ((r + ph) * ww + pw) * inChannels).update(from: xs + r * inW * inChannels, count: inW * inChannels)
                }
                src = p.pointer; ih = hh; iw = ww; ph = 0; pw = 0
            }
            var a = slim_fconv_args()
            a.in_h = Int32(ih); a.in_w = Int32(iw); a.in_cs = Int32(inChannels); a.ci = Int32(inPerGroup)
            a.out_h = Int32(oh); a.out_w = Int32(ow); a.out_cs = Int32(outChannels); a.co = Int32(outPerGroup)
            a.kh = Int32(g.kernel.h); a.kw = Int32(g.kernel.w); a.sh = Int32(g.stride.h); a.sw = Int32(g.stride.w)
            a.ph = Int32(ph); a.pw = Int32(pw); a.dh = Int32(g.dilation.h); a.dw = Int32(g.dilation.w)
            a.act = activation == .relu ? 1 : activation == .relu6 ? 2 : 0
            a.active = active
            var done = true
            let taps = g.kernel.h * g.kernel.w
            for grp in 0..<g.groups where done {
                a.in_c0 = Int32(grp * inPerGroup)
                a.out_c0 = Int32(grp * outPerGroup)
                a.wpack = UnsafeRawPointer(packed.baseAddress! + grp * taps * inPerGroup * chunks).assumingMemoryBound(to: Float.self)
                a.bias = UnsafeRawPointer(bias.baseAddress! + grp * chunks).assumingMemoryBound(to: Float.self)
                a.background = background.map { $0 + grp * outPerGroup }
                done = slim_fconv_avx512(&a, src, ys) != 0
            }
            if done { return }
        }
        for oy in 0..<oh {
            let (iy0, k0y, k1y) = g.taps(oy, stride: g.stride.h, pad: g.padding.h, dilation: g.dilation.h, kernel: g.kernel.h, size: inH)
            for ox in 0..<ow {
                let dst = ys + (oy * ow + ox) * outChannels
                if let active, active[oy * ow + ox] == 0 {
                    dst.update(from: background!, count: outChannels)
                    continue
                }
                let (ix0, k0x, k1x) = g.taps(ox, stride: g.stride.w, pad: g.padding.w, dilation: g.dilation.w, kernel: g.kernel.w, size: inW)
                if depthwise {
                    depthwisePixel(xs, inW: inW, iy0: iy0, ix0: ix0, k0y: k0y, k1y: k1y, k0x: k0x, k1x: k1x, dst: dst)
                } else {
                    for grp in 0..<g.groups {
                        pixel(xs, inW: inW, group: grp, iy0: iy0, ix0: ix0, k0y: k0y, k1y: k1y, k0x: k0x, k1x: k1x,
                              dst: dst + grp * outPerGroup)
                    }
                }
            }
        }
    }

    @inline(__always)
    private func store(_ v: SIMD16<Float>, _ dst: UnsafeMutablePointer<Float>, _ n: Int) {
        let a = activation.apply(v)
        if n >= 16 {
            UnsafeMutableRawPointer(dst).storeBytes(of: a, as: SIMD16<Float>.self)
        } else {
            for i in 0..<n { dst[i] = a[i] }
        }
    }

    @inline(__always)
    private func pixel(_ xs: UnsafeMutablePointer<Float>, inW: Int, group: Int, iy0: Int, ix0: Int,
                       k0y: Int, k1y: Int, k0x: Int, k1x: Int, dst: UnsafeMutablePointer<Float>) {
        let g = geometry, kw = g.kernel.w, cig = inPerGroup
        let wBase = packed.baseAddress! + group * g.kernel.h * kw * cig * chunks
        var c = 0
        while c < chunks {
            let n = min(4, chunks - c)
            var a0 = bias[group * chunks + c]
            var a1 = n > 1 ? bias[group * chunks + c + 1] : .zero
            var a2 = n > 2 ? bias[group * chunks + c + 2] : .zero
            var a3 = n > 3 ? bias[group * chunks + c + 3] : .zero
            for ky in k0y..<k1y {
                let row = iy0 + ky * g.dilation.h
                for kx in k0x..<k1x {
                    let xp = xs + (row * inW + ix0 + kx * g.dilation.w) * inChannels + group * cig
                    var wp = wBase + (ky * kw + kx) * cig * chunks + c
                    for ci in 0..<cig {
                        let xv = SIMD16<Float>(repeating: xp[ci])
                        a0 = a0 + xv * wp[0]
                        if n > 1 { a1 = a1 + xv * wp[1] }
                        if n > 2 { a2 = a2 + xv * wp[2] }
                        if n > 3 { a3 = a3 + xv * wp[3] }
                        wp += chunks
                    }
                }
            }
            let left = outPerGroup - c * 16
            store(a0, dst + c * 16, left)
            if n > 1 { store(a1, dst + (c + 1) * 16, left - 16) }
            if n > 2 { store(a2, dst + (c + 2) * 16, left - 32) }
            if n > 3 { store(a3, dst + (c + 3) * 16, left - 48) }
            c += n
        }
    }

    @inline(__always)
    private func depthwisePixel(_ xs: UnsafeMutablePointer<Float>, inW: Int, iy0: Int, ix0: Int,
                                k0y: Int, k1y: Int, k0x: Int, k1x: Int, dst: UnsafeMutablePointer<Float>) {
        let g = geometry, kw = g.kernel.w
        for c in 0..<chunks {
            var acc = bias[c]
            let lanes = min(16, outChannels - c * 16)
            for ky in k0y..<k1y {
                for kx in k0x..<k1x {
                    let xp = xs + ((iy0 + ky * g.dilation.h) * inW + ix0 + kx * g.dilation.w) * inChannels + c * 16
                    var xv = SIMD16<Float>.zero
                    if lanes == 16 { xv = UnsafeRawPointer(xp).loadUnaligned(as: SIMD16<Float>.self) } else {
                        for i in 0..<lanes { xv[i] = xp[i] }
                    }
                    acc = acc + xv * packed[(ky * kw + kx) * chunks + c]
                }
            }
            store(acc, dst + c * 16, lanes)
        }
    }
}

/// Folds eval-mode batch norm into a convolution's weight and bias:
/// w' = w·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β, per output channel.
public func foldBatchNorm(weight: [Float], bias: [Float]?, outChannels: Int, gamma: [Float], beta: [Float],
                          mean: [Float], variance: [Float], eps: Float) -> (weight: [Float], bias: [Float]) {
    let per = weight.count / outChannels
    var w = weight
    var b = bias ?? [Float](repeating: 0, count: outChannels)
    for o in 0..<outChannels {
        let s = gamma[o] / (variance[o] + eps).squareRoot()
        for i in 0..<per { w[o * per + i] *= s }
        b[o] = (b[o] - mean[o]) * s + beta[o]
    }
    return (w, b)
}
