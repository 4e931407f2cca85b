import CKernels

/// Runs a `SlimmableModel` (a chain of convolutions) at any of its widths, in float or int8,
/// skipping the cells a sparse BEV grid leaves empty.
///
/// Everything is planned at `init` for one input size: packed weights for every width, the
/// activation buffers (sized for full width, reused at narrower widths), the activity maps.
/// Switching width is a write to `widthIndex`: no allocation, no weight copy, no reload. `run`
/// allocates nothing. Not thread-safe: one encoder per agent pipeline.
///
/// Sparsity: a cell whose whole receptive field is "background" (the value an empty BEV cell
/// produces at that layer) has a known output, the layer's background, so it is written, not
/// computed. Cells whose receptive field reaches the zero padding are always computed. In int8
/// the result is bit-identical to the dense computation; in float it differs by rounding only.
public final class SlimmableEncoder: @unchecked Sendable {
    public let model: SlimmableModel
    public let inputHeight: Int, inputWidth: Int
    /// The width in use, an index into `model.architecture.widths`.
    public var widthIndex: Int {
        didSet {
            precondition(
                model.architecture.widths.indices.contains(widthIndex), "width index \(widthIndex) out of range")
        }
    }
    /// Skip empty cells (on by default).
    public var sparse = true
    /// The kernel path of every layer at every width (the process default unless set).
    public var kernels: KernelPath = .default {
        didSet {
            for p in plans {
                for c in p.floatConv { c.kernels = kernels }
                for c in p.qconv { c.kernels = kernels }
            }
        }
    }

    public final class LayerPlan {
        let geometry: ConvGeometry
        let inputIndex: Int  // -1: the model input; else a layer index
        public let outHeight: Int, outWidth: Int
        let floatConv: [FloatConv2d]  // per width
        let qconv: [QConv2d]  // per width (empty without int8)
        public let floatBackground: [[Float]]
        public let qBackground: [[UInt8]]
        let activity: UnsafeMutableBufferPointer<UInt8>
        /// Horizontal pass of the activity dilation: input rows × output columns.
        let rowActivity: UnsafeMutableBufferPointer<UInt8>

        init(
            geometry: ConvGeometry, inputIndex: Int, outHeight: Int, outWidth: Int, floatConv: [FloatConv2d],
            qconv: [QConv2d],
            floatBackground: [[Float]], qBackground: [[UInt8]], activity: UnsafeMutableBufferPointer<UInt8>
        ) {
            self.geometry = geometry
            self.inputIndex = inputIndex
            self.outHeight = outHeight
            self.outWidth = outWidth
            self.floatConv = floatConv
            self.qconv = qconv
            self.floatBackground = floatBackground
            self.qBackground = qBackground
            self.activity = activity
            rowActivity = .allocate(capacity: 1)
        }

        init(_ p: LayerPlan, rows: Int) {
            geometry = p.geometry
            inputIndex = p.inputIndex
            outHeight = p.outHeight
            outWidth = p.outWidth
            floatConv = p.floatConv
            qconv = p.qconv
            floatBackground = p.floatBackground
            qBackground = p.qBackground
            activity = p.activity
            rowActivity = .allocate(capacity: rows * p.outWidth)
            rowActivity.initialize(repeating: 0)
        }
    }

    public let plans: [LayerPlan]
    let floatBuffers: [FloatTensor]  // one per layer (layers may feed any later layer)
    let qBuffers: [QTensor]
    let qInput: QTensor
    let inputActivity: UnsafeMutableBufferPointer<UInt8>

    public init(model: SlimmableModel, inputHeight: Int, inputWidth: Int) {
        self.model = model
        self.inputHeight = inputHeight
        self.inputWidth = inputWidth
        let arch = model.architecture
        widthIndex = arch.widths.count - 1
        var plans: [LayerPlan] = []
        var sizes: [(Int, Int)] = []
        var fBufs: [FloatTensor] = []
        var qBufs: [QTensor] = []
        // Background of each tensor per width: the model input's is 0 (an empty BEV cell).
        var fBg: [[[Float]]] = [arch.widths.indices.map { _ in [Float](repeating: 0, count: arch.input.channels) }]
        var qBg: [[[UInt8]]] = [
            arch.widths.indices.map { wi in
                [UInt8](repeating: UInt8(model.inputQuant?[wi].zeroPoint ?? 0), count: arch.input.channels)
            }
        ]
        let names = [arch.input.name] + arch.layers.map(\.name)
        for (li, l) in arch.layers.enumerated() {
            let g = ConvGeometry(
                kernel: (l.kernel[0], l.kernel[1]), stride: (l.stride[0], l.stride[1]),
                padding: (l.padding[0], l.padding[1]), dilation: (l.dilation[0], l.dilation[1]), groups: l.groups)
            let src = names.firstIndex(of: l.input)! - 1
            let (ih, iw) = src < 0 ? (inputHeight, inputWidth) : sizes[src]
            let (oh, ow) = g.outputSize(height: ih, width: iw)
            sizes.append((oh, ow))
            let act: Activation = l.activation == "relu" ? .relu : l.activation == "relu6" ? .relu6 : .none
            var fc: [FloatConv2d] = []
            var qc: [QConv2d] = []
            var fb: [[Float]] = []
            var qb: [[UInt8]] = []
            for wi in arch.widths.indices {
                let co = arch.active(l.outChannels, slim: l.slimOut, width: wi)
                let ci = arch.active(l.inChannels, slim: l.slimIn, width: wi)
                let groups = l.groups > 1 ? co : 1  // depthwise layers slim their groups
                var gw = g
                gw.groups = groups
                let f = model.float[wi][li]
                fc.append(
                    FloatConv2d(
                        weight: f.weight, bias: f.bias, inChannels: ci, outChannels: co, geometry: gw, activation: act))
                fb.append(
                    Self.background(
                        f.weight, f.bias, co: co, ci: ci / groups, taps: g.kernel.h * g.kernel.w,
                        groups: groups, input: fBg[src + 1][wi], act: act))
                if let q = model.int8?[wi][li] {
                    let inQ = src < 0 ? model.inputQuant![wi] : model.int8![wi][src].output
                    let conv = QConv2d(
                        weight: q.weight, weightScale: q.weightScale, bias: q.bias, inChannels: ci, outChannels: co,
                        geometry: gw, input: inQ, output: q.output)
                    qc.append(conv)
                    qb.append(Self.qBackground(conv, input: qBg[src + 1][wi]))
                }
            }
            fBg.append(fb)
            qBg.append(qb)
            let activity = UnsafeMutableBufferPointer<UInt8>.allocate(capacity: oh * ow)
            activity.initialize(repeating: 1)
            plans.append(
                LayerPlan(
                    LayerPlan(
                        geometry: g, inputIndex: src, outHeight: oh, outWidth: ow, floatConv: fc, qconv: qc,
                        floatBackground: fb, qBackground: qb, activity: activity), rows: ih))
            fBufs.append(FloatTensor(height: oh, width: ow, channels: l.outChannels))
            qBufs.append(QTensor(height: oh, width: ow, channels: l.outChannels))
        }
        self.plans = plans
        outputLayer = arch.layers.firstIndex { $0.name == arch.output }!
        floatBuffers = fBufs
        qBuffers = qBufs
        qInput = QTensor(height: inputHeight, width: inputWidth, channels: arch.input.channels)
        inputActivity = .allocate(capacity: inputHeight * inputWidth)
        inputActivity.initialize(repeating: 1)
    }

    deinit {
        for p in plans {
            p.activity.deallocate()
            p.rowActivity.deallocate()
        }
        inputActivity.deallocate()
    }

    /// The output layer's index.
    public let outputLayer: Int

    /// Output channels at the current width.
    public var outputChannels: Int { plans[outputLayer].floatConv[widthIndex].outChannels }

    /// Quantization of the int8 output at the current width.
    public var outputQuant: QuantParams? { model.int8?[widthIndex][outputLayer].output }

    public var inputQuant: QuantParams? { model.inputQuant?[widthIndex] }

    /// Runs in float. `input` is H×W×C (NHWC) of the planned size. The result is a buffer of the
    /// encoder's, valid until the next run.
    public func runFloat(_ input: FloatTensor) -> FloatTensor {
        precondition(
            input.height == inputHeight && input.width == inputWidth
                && input.channels == model.architecture.input.channels)
        if sparse { markActive(input.values, channels: input.channels, background: 0) }
        runLayers(input, buffers: floatBuffers) { p, x, y, active in
            p.floatBackground[widthIndex].withUnsafeBufferPointer { bg in
                p.floatConv[widthIndex].run(x, into: y, active: active, background: bg.baseAddress)
            }
        }
        return floatBuffers[outputLayer]
    }

    /// Quantizes `input` with the current width's input parameters (as ONNX QuantizeLinear:
    /// x / scale, round half to even, saturate), then runs in int8. Empty cells are not
    /// quantized but filled with the zero point, and mark the input's activity on the way.
    public func runInt8(_ input: FloatTensor) -> QTensor {
        precondition(input.height == inputHeight && input.width == inputWidth)
        model.inputQuant![widthIndex].quantize(input, into: qInput, activity: inputActivity.baseAddress!)
        return runInt8Layers(qInput)
    }

    /// Runs in int8 from an already quantized input.
    public func runInt8(quantized input: QTensor) -> QTensor {
        precondition(model.int8 != nil, "\(model.file) has no int8 tensors")
        if sparse {
            markActive(
                input.values, channels: input.channels, background: UInt8(model.inputQuant![widthIndex].zeroPoint))
        }
        return runInt8Layers(input)
    }

    private func runInt8Layers(_ input: QTensor) -> QTensor {
        runLayers(input, buffers: qBuffers) { p, x, y, active in
            p.qBackground[widthIndex].withUnsafeBufferPointer { bg in
                p.qconv[widthIndex].run(x, into: y, active: active, background: bg.baseAddress)
            }
        }
        return qBuffers[outputLayer]
    }

    /// Runs every layer in order (float or int8 alike): picks its input, propagates the
    /// activity map when sparse, and hands the layer, input, output and activity to `run`.
    @inline(__always)
    private func runLayers<T>(
        _ input: Tensor<T>, buffers: [Tensor<T>],
        _ run: (LayerPlan, Tensor<T>, Tensor<T>, UnsafePointer<UInt8>?) -> Void
    ) {
        for li in 0..<plans.count {
            let p = plans[li]
            let x = p.inputIndex < 0 ? input : buffers[p.inputIndex]
            let inAct = p.inputIndex < 0 ? inputActivity : plans[p.inputIndex].activity
            if sparse { propagate(inAct, inH: x.height, inW: x.width, plan: p) }
            run(p, x, buffers[li], sparse ? UnsafePointer(p.activity.baseAddress) : nil)
        }
    }

    /// Input cells with any channel off the background are active.
    func markActive(_ values: UnsafeMutableBufferPointer<Float>, channels: Int, background: Float) {
        precondition(background == 0)
        slim_mark_active_f32(
            values.baseAddress, Int32(values.count / channels), Int32(channels), inputActivity.baseAddress)
    }

    func markActive(_ values: UnsafeMutableBufferPointer<UInt8>, channels: Int, background: UInt8) {
        slim_mark_active_u8(
            values.baseAddress, Int32(values.count / channels), Int32(channels), background, inputActivity.baseAddress)
    }

    /// An output cell is active if any input cell of its receptive field is, or if the field
    /// reaches the padding (where the input is 0, not the background).
    func propagate(_ inAct: UnsafeMutableBufferPointer<UInt8>, inH: Int, inW: Int, plan p: LayerPlan) {
        let g = p.geometry
        slim_dilate_activity(
            inAct.baseAddress, Int32(inH), Int32(inW), p.activity.baseAddress, Int32(p.outHeight), Int32(p.outWidth),
            Int32(g.kernel.h), Int32(g.kernel.w), Int32(g.stride.h), Int32(g.stride.w), Int32(g.padding.h),
            Int32(g.padding.w), Int32(g.dilation.h), Int32(g.dilation.w), p.rowActivity.baseAddress)
    }

    static func background(
        _ w: [Float], _ b: [Float], co: Int, ci: Int, taps: Int, groups: Int, input: [Float], act: Activation
    ) -> [Float] {
        let coPerGroup = co / groups
        return (0..<co).map { o in
            var s = b[o]
            let g = o / coPerGroup
            for i in 0..<ci { for t in 0..<taps { s += w[(o * ci + i) * taps + t] * input[g * ci + i] } }
            return act.apply(s)
        }
    }

    static func qBackground(_ conv: QConv2d, input: [UInt8]) -> [UInt8] {
        let taps = conv.geometry.kernel.h * conv.geometry.kernel.w
        return (0..<conv.outChannels).map { o in
            let g = o / conv.outPerGroup
            var acc: Int32 = 0
            for i in 0..<conv.inPerGroup {
                for t in 0..<taps {
                    acc +=
                        (Int32(input[g * conv.inPerGroup + i]) - conv.input.zeroPoint)
                        * Int32(conv.weights[(o * conv.inPerGroup + i) * taps + t])
                }
            }
            let v = (Float(acc &+ conv.bias[o]) * conv.mult[o]).rounded(.toNearestOrEven) + Float(conv.output.zeroPoint)
            return UInt8(min(max(v, 0), 255))
        }
    }
}
