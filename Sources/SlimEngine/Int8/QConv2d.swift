import CKernels

/// Affine uint8 quantization of an activation: x ≈ scale · (q − zeroPoint).
public struct QuantParams: Sendable, Equatable {
    public var scale: Float
    public var zeroPoint: Int32
    public init(scale: Float, zeroPoint: Int32) {
        self.scale = scale
        self.zeroPoint = zeroPoint
    }

    /// Quantizes with round half to even and saturation (ONNX QuantizeLinear).
    @inline(__always)
    public func quantize(_ x: Float) -> UInt8 {
        let v = (x / scale).rounded(.toNearestOrEven) + Float(zeroPoint)
        return UInt8(min(max(v, 0), 255))
    }
}

/// An int8 convolution: uint8 activations (per tensor, asymmetric), int8 weights (per output
/// channel, symmetric), int32 bias, requantized as ONNX Runtime computes QLinearConv:
/// y = sat(round_half_even(float(Σ(x − x_zp)·w + bias) · (x_scale·w_scale[c]/y_scale)) + y_zp).
/// A ReLU is the saturation at y_zp. The sum is exact in int32, so the result is bit-exact with
/// ONNX Runtime wherever the float products round the same way.
///
/// Runs the AVX-512 VNNI kernel of `CKernels` where the CPU has it, else a portable Swift
/// kernel; both compute the same integers.
public final class QConv2d: @unchecked Sendable {
    public let geometry: ConvGeometry
    public let inChannels: Int, outChannels: Int
    public let input: QuantParams, output: QuantParams
    /// Forces the portable kernel (tests compare both paths).
    nonisolated(unsafe) public static var forcePortable = false

    let inPerGroup: Int, outPerGroup: Int
    let weights: [Int8]            // [out][in/groups][kh][kw]
    let bias: [Int32]
    let mult: [Float]
    let wsumTap: [Int32]           // per group: [kh*kw][outPerGroup]
    let zpPrefix: [Int32]          // per group: [(kh+1)*(kw+1)][outPerGroup], x_zp · 2-D prefix sums of wsumTap
    let packed: [Int8]             // per group: VNNI layout
    let packedGroupStride: Int

    public init(weight: [Int8], weightScale: [Float], bias: [Int32], inChannels: Int, outChannels: Int,
                geometry g: ConvGeometry, input: QuantParams, output: QuantParams) {
        precondition(inChannels % g.groups == 0 && outChannels % g.groups == 0)
        geometry = g
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.input = input
        self.output = output
        inPerGroup = inChannels / g.groups
        outPerGroup = outChannels / g.groups
        let taps = g.kernel.h * g.kernel.w
        precondition(weight.count == outChannels * inPerGroup * taps && weightScale.count == outChannels && bias.count == outChannels)
        weights = weight
        self.bias = bias
        mult = (0..<outChannels).map { input.scale * weightScale[$0] / output.scale }
        var wsum = [Int32](repeating: 0, count: g.groups * taps * outPerGroup)
        let ci4 = (inPerGroup + 3) / 4, blocks = (outPerGroup + 15) / 16
        packedGroupStride = blocks * taps * ci4 * 64
        var packed = [Int8](repeating: 0, count: g.groups * packedGroupStride)
        for o in 0..<outChannels {
            let grp = o / outPerGroup, oc = o % outPerGroup
            for i in 0..<inPerGroup {
                for t in 0..<taps {
                    let w = weight[(o * inPerGroup + i) * taps + t]
                    wsum[(grp * taps + t) * outPerGroup + oc] += Int32(w)
                    let idx = grp * packedGroupStride + (((oc / 16) * taps + t) * ci4 + i / 4) * 64 + (oc % 16) * 4 + i % 4
                    packed[idx] = w
                }
            }
        }
        wsumTap = wsum
        self.packed = packed
        let kh = g.kernel.h, kw = g.kernel.w, opg = outPerGroup, pstride = (kh + 1) * (kw + 1) * opg
        var prefix = [Int32](repeating: 0, count: g.groups * pstride)
        for grp in 0..<g.groups {
            for r in 1...kh {
                for c in 1...kw {
                    for o in 0..<opg {
                        let t = (r - 1) * kw + (c - 1)
                        let v = input.zeroPoint * wsum[(grp * taps + t) * opg + o]
                        let at = { (rr: Int, cc: Int) in grp * pstride + (rr * (kw + 1) + cc) * opg + o }
                        prefix[at(r, c)] = v &+ prefix[at(r - 1, c)] &+ prefix[at(r, c - 1)] &- prefix[at(r - 1, c - 1)]
                    }
                }
            }
        }
        zpPrefix = prefix
    }

    public var usesVNNI: Bool { !Self.forcePortable && slim_qconv_vnni_available() != 0 && outPerGroup <= 1024 }

    /// y = qconv(x). `y` is reshaped to the output size. Outputs whose flag in `active` is 0 are
    /// set to `background` (one value per output channel) instead of computed.
    public func run(_ x: QTensor, into y: QTensor, active: UnsafePointer<UInt8>? = nil, background: UnsafePointer<UInt8>? = nil) {
        precondition(x.channels == inChannels)
        let g = geometry
        let (oh, ow) = g.outputSize(height: x.height, width: x.width)
        y.reshape(height: oh, width: ow, channels: outChannels)
        if usesVNNI {
            let taps = g.kernel.h * g.kernel.w
            for grp in 0..<g.groups {
                var a = slim_qconv_args()
                a.in_h = Int32(x.height); a.in_w = Int32(x.width); a.in_cs = Int32(inChannels); a.in_c0 = Int32(grp * inPerGroup)
                a.ci = Int32(inPerGroup)
                a.out_h = Int32(oh); a.out_w = Int32(ow); a.out_cs = Int32(outChannels); a.out_c0 = Int32(grp * outPerGroup)
                a.co = Int32(outPerGroup)
                a.kh = Int32(g.kernel.h); a.kw = Int32(g.kernel.w); a.sh = Int32(g.stride.h); a.sw = Int32(g.stride.w)
                a.ph = Int32(g.padding.h); a.pw = Int32(g.padding.w); a.dh = Int32(g.dilation.h); a.dw = Int32(g.dilation.w)
                a.x_zp = input.zeroPoint
                a.y_zp = output.zeroPoint
                a.active = active
                a.background = background.map { $0 + grp * outPerGroup }
                let done = packed.withUnsafeBufferPointer { pk in
                    wsumTap.withUnsafeBufferPointer { ws in
                        bias.withUnsafeBufferPointer { b in
                            mult.withUnsafeBufferPointer { m in
                              zpPrefix.withUnsafeBufferPointer { zp in
                                a.wpack = pk.baseAddress! + grp * packedGroupStride
                                a.zp_prefix = zp.baseAddress! + grp * (g.kernel.h + 1) * (g.kernel.w + 1) * outPerGroup
                                a.wsum_tap = ws.baseAddress! + grp * taps * outPerGroup
                                a.bias = b.baseAddress! + grp * outPerGroup
                                a.mult = m.baseAddress! + grp * outPerGroup
                                return slim_qconv_u8s8_vnni(&a, x.pointer, y.pointer)
                              }
                            }
                        }
                    }
                }
                precondition(done != 0)
            }
            return
        }
        runPortable(x, y, oh: oh, ow: ow, active: active, background: background)
    }

    private func runPortable(_ x: QTensor, _ y: QTensor, oh: Int, ow: Int, active: UnsafePointer<UInt8>?, background: UnsafePointer<UInt8>?) {
        let g = geometry, taps = g.kernel.h * g.kernel.w
        let xzp = input.zeroPoint, yzp = Float(output.zeroPoint)
        let xs = x.pointer, ys = y.pointer
        weights.withUnsafeBufferPointer { w in
            for oy in 0..<oh {
                let (iy0, k0y, k1y) = g.taps(oy, stride: g.stride.h, pad: g.padding.h, dilation: g.dilation.h, kernel: g.kernel.h, size: x.height)
                for ox in 0..<ow {
                    let dst = ys + (oy * ow + ox) * outChannels
                    if let active, active[oy * ow + ox] == 0 {
                        dst.update(from: background!, count: outChannels)
                        continue
                    }
                    let (ix0, k0x, k1x) = g.taps(ox, stride: g.stride.w, pad: g.padding.w, dilation: g.dilation.w, kernel: g.kernel.w, size: x.width)
                    for o in 0..<outChannels {
                        let grp = o / outPerGroup
                        var acc: Int32 = 0
                        for ky in k0y..<k1y {
                            for kx in k0x..<k1x {
                                let xp = xs + ((iy0 + ky * g.dilation.h) * x.width + ix0 + kx * g.dilation.w) * inChannels + grp * inPerGroup
                                let wp = o * inPerGroup * taps + ky * g.kernel.w + kx
                                for i in 0..<inPerGroup { acc &+= (Int32(xp[i]) - xzp) * Int32(w[wp + i * taps]) }
                            }
                        }
                        let v = (Float(acc &+ bias[o]) * mult[o]).rounded(.toNearestOrEven) + yzp
                        dst[o] = UInt8(min(max(v, 0), 255))
                    }
                }
            }
        }
    }
}

extension QConv2d {
    /// True when this CPU runs the AVX-512 VNNI kernel.
    public static var vnniAvailable: Bool { slim_qconv_vnni_available() != 0 }
}
