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

    /// `x` quantized into `codes` (reshaped to its shape), each value as `quantize(_:)`, in vectors
    /// (slim_quantize_cells); `activity` (one byte per cell) gets 1 where a cell holds a nonzero
    /// value, 0 where it is empty (then written as the zero point).
    public func quantize(_ x: FloatTensor, into codes: QTensor, activity: UnsafeMutablePointer<UInt8>) {
        codes.reshape(height: x.height, width: x.width, channels: x.channels)
        slim_quantize_cells(x.pointer, Int32(x.height * x.width), Int32(x.channels), scale, zeroPoint, codes.pointer, activity)
    }

    /// `codes` dequantized (scale · (q − zero point)) into `y`, reshaped to their shape.
    public func dequantize(_ codes: QTensor, into y: FloatTensor) {
        y.reshape(height: codes.height, width: codes.width, channels: codes.channels)
        for i in 0..<codes.count { y.storage[i] = scale * Float(Int32(codes.storage[i]) - zeroPoint) }
    }
}

/// An int8 convolution: uint8 activations (per tensor, asymmetric), int8 weights (per output
/// channel, symmetric), int32 bias, requantized as ONNX Runtime computes QLinearConv:
/// y = sat(round_half_even(float(Σ(x − x_zp)·w + bias) · (x_scale·w_scale[c]/y_scale)) + y_zp).
/// A ReLU is the saturation at y_zp. The sum is exact in int32 on every kernel path, so the result
/// is bit-exact with ONNX Runtime wherever the float products round the same way.
///
/// Runs on `kernels` (the process default unless set): the C kernels of `CKernels` for that
/// path. Weights are packed once at `init` for every path; the zero-padded input is built in a
/// scratch buffer that grows to the largest input seen and is then reused (no allocation per
/// frame). Not thread-safe: one instance per pipeline.
public final class QConv2d: @unchecked Sendable {
    public let geometry: ConvGeometry
    public let inChannels: Int, outChannels: Int
    public let input: QuantParams, output: QuantParams
    /// The kernel path `run` uses. Setting a path this CPU lacks is a programming error (trap):
    /// check `KernelPath.isSupported` or take `KernelPath.default`.
    public var kernels: KernelPath = .default {
        willSet { precondition(newValue.isSupported, "kernel path \(newValue) is not supported on this CPU") }
    }

    let inPerGroup: Int, outPerGroup: Int
    let weights: [Int8]  // [out][in/groups][kh][kw]
    let bias: [Int32]
    let mult: [Float]
    /// x_scale · w_scale[c]: the float output's multipliers (`run(_:intoFloat:relu:)`).
    let floatMult: [Float]
    let dot4: [Int8], pairs: [Int16], wsum: [Int32]  // per group, slim_qconv_pack's layouts
    let dot4Stride: Int, pairsStride: Int
    private var scratch: UnsafeMutableRawPointer?
    private var scratchBytes = 0

    public init(
        weight: [Int8], weightScale: [Float], bias: [Int32], inChannels: Int, outChannels: Int,
        geometry g: ConvGeometry, input: QuantParams, output: QuantParams
    ) {
        precondition(inChannels % g.groups == 0 && outChannels % g.groups == 0)
        geometry = g
        self.inChannels = inChannels
        self.outChannels = outChannels
        self.input = input
        self.output = output
        inPerGroup = inChannels / g.groups
        outPerGroup = outChannels / g.groups
        let taps = g.kernel.h * g.kernel.w
        precondition(
            weight.count == outChannels * inPerGroup * taps && weightScale.count == outChannels
                && bias.count == outChannels)
        precondition(
            taps <= 64 && outPerGroup <= 1024, "int8 kernels take at most 64 taps and 1024 output channels per group")
        weights = weight
        self.bias = bias
        mult = (0..<outChannels).map { input.scale * weightScale[$0] / output.scale }
        floatMult = (0..<outChannels).map { input.scale * weightScale[$0] }
        var d4 = 0
        var pe = 0
        slim_qconv_pack_sizes(Int32(outPerGroup), Int32(inPerGroup), Int32(taps), &d4, &pe)
        dot4Stride = d4
        pairsStride = pe
        var dot4 = [Int8](repeating: 0, count: g.groups * d4)
        var pairs = [Int16](repeating: 0, count: g.groups * pe)
        var wsum = [Int32](repeating: 0, count: outChannels)
        let (cog, cig) = (outPerGroup, inPerGroup)
        let per = cog * cig * taps
        for grp in 0..<g.groups {
            weight.withUnsafeBufferPointer { w in
                dot4.withUnsafeMutableBufferPointer { d in
                    pairs.withUnsafeMutableBufferPointer { p in
                        wsum.withUnsafeMutableBufferPointer { s in
                            slim_qconv_pack(
                                w.baseAddress! + grp * per, Int32(cog), Int32(cig), Int32(taps),
                                d.baseAddress! + grp * d4, p.baseAddress! + grp * pe, s.baseAddress! + grp * cog)
                        }
                    }
                }
            }
        }
        self.dot4 = dot4
        self.pairs = pairs
        self.wsum = wsum
    }

    deinit { scratch?.deallocate() }

    /// y = qconv(x). `y` is reshaped to the output size. Outputs whose flag in `active` is 0 are
    /// set to `background` (one value per output channel) instead of computed.
    public func run(
        _ x: QTensor, into y: QTensor, active: UnsafePointer<UInt8>? = nil, background: UnsafePointer<UInt8>? = nil
    ) {
        precondition(active == nil || background != nil, "an activity map needs a background")
        let (oh, ow) = geometry.outputSize(height: x.height, width: x.width)
        y.reshape(height: oh, width: ow, channels: outChannels)
        var a = slim_qconv_args()
        a.active = active
        a.background = background
        call(&a, x, (oh, ow), UnsafeMutableRawPointer(y.pointer), mult)
    }

    /// The same sums dequantized instead of requantized: y = x_scale · w_scale[c] · (Σ(x − x_zp)·w +
    /// bias), then ReLU where `relu`, in float (ONNX Runtime's ConvInteger followed by the scale; the
    /// output's `QuantParams` are not used). No output quantization noise: what a layer needs whose
    /// outputs differ in range by channel (a detection head's small yaw terms beside large scores).
    /// Bit-identical on every kernel path. Outputs whose `active` flag is 0 are `background`.
    public func run(
        _ x: QTensor, intoFloat y: FloatTensor, relu: Bool, active: UnsafePointer<UInt8>? = nil,
        background: UnsafePointer<Float>? = nil
    ) {
        precondition(active == nil || background != nil, "an activity map needs a background")
        let (oh, ow) = geometry.outputSize(height: x.height, width: x.width)
        y.reshape(height: oh, width: ow, channels: outChannels)
        var a = slim_qconv_args()
        a.y_f32 = relu ? 2 : 1
        a.active = active
        a.background_f32 = background
        call(&a, x, (oh, ow), UnsafeMutableRawPointer(y.pointer), floatMult)
    }

    /// Fills the shape, zero points and scratch of `a` and runs every group into `y` (bytes or
    /// floats, as `a.y_f32` says), with `mult` as the per-channel multipliers.
    private func call(
        _ a: inout slim_qconv_args, _ x: QTensor, _ size: (Int, Int), _ y: UnsafeMutableRawPointer, _ mult: [Float]
    ) {
        precondition(x.channels == inChannels)
        let g = geometry
        let (oh, ow) = size
        let out = y.assumingMemoryBound(to: UInt8.self)
        a.setShape(
            path: kernels, input: (x.height, x.width, inChannels), output: (oh, ow, outChannels),
            perGroup: (inPerGroup, outPerGroup), geometry: g)
        a.ph = Int32(g.padding.h)
        a.pw = Int32(g.padding.w)
        a.x_zp = input.zeroPoint
        a.y_zp = output.zeroPoint
        let need = slim_qconv_scratch_bytes(&a)
        if need > scratchBytes {
            scratch?.deallocate()
            scratch = .allocate(byteCount: need, alignment: 64)
            scratchBytes = need
        }
        a.scratch = scratch
        a.scratch_bytes = scratchBytes
        dot4.withUnsafeBufferPointer { d in
            pairs.withUnsafeBufferPointer { p in
                wsum.withUnsafeBufferPointer { s in
                    bias.withUnsafeBufferPointer { b in
                        mult.withUnsafeBufferPointer { m in
                            for grp in 0..<g.groups {
                                a.in_c0 = Int32(grp * inPerGroup)
                                a.out_c0 = Int32(grp * outPerGroup)
                                a.dot4 = d.baseAddress! + grp * dot4Stride
                                a.pairs = p.baseAddress! + grp * pairsStride
                                a.wsum = s.baseAddress! + grp * outPerGroup
                                a.bias = b.baseAddress! + grp * outPerGroup
                                a.mult = m.baseAddress! + grp * outPerGroup
                                if grp > 0 {  // the group's slice of the background
                                    a.background = a.background.map { $0 + outPerGroup }
                                    a.background_f32 = a.background_f32.map { $0 + outPerGroup }
                                }
                                let rc = slim_qconv(&a, x.pointer, out)
                                precondition(rc == SLIM_OK, "slim_qconv on \(kernels) failed with \(rc)")
                            }
                        }
                    }
                }
            }
        }
    }
}
