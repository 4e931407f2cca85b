import CKernels

/// Shape parameters of a 2-D convolution (PyTorch semantics, zero padding).
public struct ConvGeometry: Sendable, Equatable {
    public var kernel: (h: Int, w: Int)
    public var stride: (h: Int, w: Int) = (1, 1)
    public var padding: (h: Int, w: Int) = (0, 0)
    public var dilation: (h: Int, w: Int) = (1, 1)
    public var groups = 1

    public init(
        kernel: (Int, Int), stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0), dilation: (Int, Int) = (1, 1),
        groups: Int = 1
    ) {
        self.kernel = (kernel.0, kernel.1)
        self.stride = (stride.0, stride.1)
        self.padding = (padding.0, padding.1)
        self.dilation = (dilation.0, dilation.1)
        self.groups = groups
    }

    public func outputSize(height: Int, width: Int) -> (height: Int, width: Int) {
        (
            (height + 2 * padding.h - dilation.h * (kernel.h - 1) - 1) / stride.h + 1,
            (width + 2 * padding.w - dilation.w * (kernel.w - 1) - 1) / stride.w + 1
        )
    }

    /// Taps of output row `o` that fall inside an input of `size` rows: [first, end).
    @inline(__always)
    func taps(_ o: Int, stride s: Int, pad p: Int, dilation d: Int, kernel k: Int, size: Int) -> (Int, Int, Int) {
        let i0 = o * s - p
        var k0 = 0
        var k1 = k
        while k0 < k1 && i0 + k0 * d < 0 { k0 += 1 }
        while k1 > k0 && i0 + (k1 - 1) * d >= size { k1 -= 1 }
        return (i0, k0, k1)
    }

    public static func == (a: ConvGeometry, b: ConvGeometry) -> Bool {
        a.kernel == b.kernel && a.stride == b.stride && a.padding == b.padding && a.dilation == b.dilation
            && a.groups == b.groups
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
/// input channel, the output channels in chunks of 16 lanes (`slim_fconv_pack`), so the inner
/// loop is a broadcast and a multiply-add per chunk. Runs on `kernels` (the process default unless
/// set): the C kernel of `CKernels`, one source compiled per path (16-lane vectors as 4 × SSE2 or
/// NEON, 2 × AVX2, 1 × AVX-512), on a zero-padded copy of the input so that every output pixel
/// takes the register-tile path. Depthwise convolutions take a Swift SIMD path of their own.
/// Not thread-safe: one instance per pipeline.
public final class FloatConv2d: @unchecked Sendable {
    public let geometry: ConvGeometry
    public let inChannels: Int
    public let outChannels: Int
    public let activation: Activation
    /// The kernel path `run` uses; setting one this CPU lacks traps (see `KernelPath`).
    public var kernels: KernelPath = .default {
        willSet { precondition(newValue.isSupported, "kernel path \(newValue) is not supported on this CPU") }
    }
    let inPerGroup: Int, outPerGroup: Int, chunks: Int
    /// The packed weights, in the kernel's layout (a layer that mixes several convolutions' weights,
    /// like the rotation-steered fusion, writes them here).
    public let packed: UnsafeMutableBufferPointer<SIMD16<Float>>
    let bias: UnsafeMutableBufferPointer<SIMD16<Float>>
    let depthwise: Bool
    /// Zero-padded copy of the input (grown once to the largest input, then reused).
    private var padded: FloatTensor?

    /// - Parameters:
    ///   - weight: [out, in / groups, kh, kw] (PyTorch layout).
    ///   - bias: [out] or nil.
    public init(
        weight: [Float], bias: [Float]?, inChannels: Int, outChannels: Int, geometry g: ConvGeometry,
        activation: Activation = .none
    ) {
        precondition(inChannels % g.groups == 0 && outChannels % g.groups == 0)
        geometry = g
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.activation = activation
        inPerGroup = inChannels / g.groups
        outPerGroup = outChannels / g.groups
        let kh = g.kernel.h
        let kw = g.kernel.w
        let taps = kh * kw
        precondition(weight.count == outChannels * inPerGroup * taps)
        precondition(taps <= 64, "float kernels take at most 64 taps")
        depthwise = g.groups == inChannels && g.groups == outChannels && g.groups > 1
        if depthwise {
            // [tap][channel chunk]
            chunks = (outChannels + 15) / 16
            packed = .allocate(capacity: taps * chunks)
            packed.initialize(repeating: .zero)
            for c in 0..<outChannels {
                for t in 0..<taps { packed[t * chunks + c / 16][c % 16] = weight[c * taps + t] }
            }
        } else {
            chunks = (outPerGroup + 15) / 16
            let perGroup = taps * inPerGroup * chunks
            packed = .allocate(capacity: g.groups * perGroup)
            packed.initialize(repeating: .zero)
            let raw = UnsafeMutableRawPointer(packed.baseAddress!).assumingMemoryBound(to: Float.self)
            let (cog, cig) = (outPerGroup, inPerGroup)
            weight.withUnsafeBufferPointer { w in
                for grp in 0..<g.groups {
                    slim_fconv_pack(
                        w.baseAddress! + grp * cog * cig * taps, Int32(cog), Int32(cig), Int32(taps),
                        raw + grp * perGroup * 16)
                }
            }
        }
        let biasChunks = depthwise ? chunks : g.groups * chunks
        self.bias = .allocate(capacity: biasChunks)
        self.bias.initialize(repeating: .zero)
        if let bias {
            for o in 0..<outChannels {
                if depthwise {
                    self.bias[o / 16][o % 16] = bias[o]
                } else {
                    let grp = o / outPerGroup
                    let oc = o % outPerGroup
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
    public func run(
        _ x: FloatTensor, into y: FloatTensor, active: UnsafePointer<UInt8>? = nil,
        background: UnsafePointer<Float>? = nil
    ) {
        precondition(x.channels == inChannels)
        precondition(active == nil || background != nil, "an activity map needs a background")
        let g = geometry
        let (oh, ow) = g.outputSize(height: x.height, width: x.width)
        y.reshape(height: oh, width: ow, channels: outChannels)
        if depthwise {
            runDepthwise(x, y, oh: oh, ow: ow, active: active, background: background)
            return
        }
        var src = x.pointer
        var ih = x.height
        var iw = x.width
        let ph = g.padding.h
        let pw = g.padding.w
        if ph > 0 || pw > 0 {
            let hh = ih + 2 * ph
            let ww = iw + 2 * pw
            if padded == nil || padded!.capacity < hh * ww * inChannels {
                padded = FloatTensor(height: hh, width: ww, channels: inChannels)
            }
            let p = padded!
            p.reshape(height: hh, width: ww, channels: inChannels)
            // Zero only the border: the interior is overwritten.
            let c = inChannels
            p.pointer.update(repeating: 0, count: ph * ww * c)
            (p.pointer + (ph + ih) * ww * c).update(repeating: 0, count: ph * ww * c)
            for r in 0..<ih {
                let row = p.pointer + (r + ph) * ww * c
                row.update(repeating: 0, count: pw * c)
                (row + pw * c).update(from: x.pointer + r * iw * c, count: iw * c)
                (row + (pw + iw) * c).update(repeating: 0, count: pw * c)
            }
            src = p.pointer
            ih = hh
            iw = ww
        }
        var a = slim_fconv_args()
        a.setShape(
            path: kernels, input: (ih, iw, inChannels), output: (oh, ow, outChannels),
            perGroup: (inPerGroup, outPerGroup), geometry: g)
        a.act = activation == .relu ? 1 : activation == .relu6 ? 2 : 0
        a.active = active
        let taps = g.kernel.h * g.kernel.w
        for grp in 0..<g.groups {
            a.in_c0 = Int32(grp * inPerGroup)
            a.out_c0 = Int32(grp * outPerGroup)
            a.wpack = UnsafeRawPointer(packed.baseAddress! + grp * taps * inPerGroup * chunks).assumingMemoryBound(
                to: Float.self)
            a.bias = UnsafeRawPointer(bias.baseAddress! + grp * chunks).assumingMemoryBound(to: Float.self)
            a.background = background.map { $0 + grp * outPerGroup }
            let rc = slim_fconv(&a, src, y.pointer)
            precondition(rc == SLIM_OK, "slim_fconv on \(kernels) failed with \(rc)")
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

    private func runDepthwise(
        _ x: FloatTensor, _ y: FloatTensor, oh: Int, ow: Int, active: UnsafePointer<UInt8>?,
        background: UnsafePointer<Float>?
    ) {
        let g = geometry
        let kw = g.kernel.w
        let xs = x.pointer
        let inW = x.width
        for oy in 0..<oh {
            let (iy0, k0y, k1y) = g.taps(
                oy, stride: g.stride.h, pad: g.padding.h, dilation: g.dilation.h, kernel: g.kernel.h, size: x.height)
            for ox in 0..<ow {
                let dst = y.pointer + (oy * ow + ox) * outChannels
                if let active, active[oy * ow + ox] == 0 {
                    dst.update(from: background!, count: outChannels)
                    continue
                }
                let (ix0, k0x, k1x) = g.taps(
                    ox, stride: g.stride.w, pad: g.padding.w, dilation: g.dilation.w, kernel: g.kernel.w, size: inW)
                for c in 0..<chunks {
                    var acc = bias[c]
                    let lanes = min(16, outChannels - c * 16)
                    for ky in k0y..<k1y {
                        for kx in k0x..<k1x {
                            let xp =
                                xs + ((iy0 + ky * g.dilation.h) * inW + ix0 + kx * g.dilation.w) * inChannels + c * 16
                            var xv = SIMD16<Float>.zero
                            if lanes == 16 {
                                xv = UnsafeRawPointer(xp).loadUnaligned(as: SIMD16<Float>.self)
                            } else {
                                for i in 0..<lanes { xv[i] = xp[i] }
                            }
                            acc = acc + xv * packed[(ky * kw + kx) * chunks + c]
                        }
                    }
                    store(acc, dst + c * 16, lanes)
                }
            }
        }
    }
}

/// Folds eval-mode batch norm into a convolution's weight and bias:
/// w' = w·γ/√(σ²+ε), b' = (b − μ)·γ/√(σ²+ε) + β, per output channel.
public func foldBatchNorm(
    weight: [Float], bias: [Float]?, outChannels: Int, gamma: [Float], beta: [Float],
    mean: [Float], variance: [Float], eps: Float
) -> (weight: [Float], bias: [Float]) {
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

extension ConvGeometry {
    /// Marks the outputs of a convolution of this geometry over an `height` × `width` input whose
    /// receptive field holds an active input (`input[i]` ≠ 0), or reaches the padding (where the
    /// input is 0, not the background): only those differ from the output for an all-background
    /// input. `output` takes the output size's cells; `scratch` at least height × output width bytes.
    public func propagateActivity(
        _ input: UnsafePointer<UInt8>, height: Int, width: Int, into output: UnsafeMutablePointer<UInt8>,
        scratch: UnsafeMutablePointer<UInt8>
    ) {
        let (oh, ow) = outputSize(height: height, width: width)
        slim_dilate_activity(
            input, Int32(height), Int32(width), output, Int32(oh), Int32(ow), Int32(kernel.h), Int32(kernel.w),
            Int32(stride.h), Int32(stride.w), Int32(padding.h), Int32(padding.w), Int32(dilation.h), Int32(dilation.w),
            scratch)
    }
}
