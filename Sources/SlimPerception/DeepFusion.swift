import Foundation
import SlimCore
import SlimEngine

/// A deep-fusion model file's `architecture.deep` (training/export_deep.py, docs/model-format.md):
/// the agent runs the encoder, a backbone and its own head, and sends a K-channel compression of the
/// backbone at the cells its head marks; the server fuses those messages (`DeepFusionDetector`).
public struct DeepArchitecture: Sendable {
    /// Encoder output channels (the backbone's input), backbone and head channels, message channels K.
    public let inputChannels: Int, backboneChannels: Int, headChannels: Int, messageChannels: Int
    /// The geometry channels carried through the warp: heatmap, centre x, y, log l, log w, sin 2ψ, cos 2ψ.
    public static let geometryChannels = 7
    public let dilations: [Int]
    public let height: Int, width: Int
    public let halfExtent: Float, cell: Float
    public let peakThreshold: Float, topK: Int, nmsIoU: Float
    /// `decode.peaks`; files written before it existed decode 3×3 local maxima.
    public let peaks: HeadDecoder.Peaks
    /// `decode.merge`: how late fusion merges boxes and whether the fused head's boxes are merged
    /// with the agents' own read from their messages; files written before it existed: NMS.
    public let merge: BoxMerge

    /// nil when the file is not a deep-fusion model (no `architecture.deep`).
    public init?(_ st: Safetensors) throws(ModelFileError) {
        func fail(_ s: String, _ p: String) -> ModelFileError {
            ModelFileError(kind: .architecture, file: st.file, subject: "architecture.deep\(s)", problem: p)
        }
        guard let text = st.metadata["architecture"],
            let arch = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            let deep = arch["deep"]
        else { return nil }
        guard let d = deep as? [String: Any] else { throw fail("", "not an object") }
        func int(_ k: String, _ r: ClosedRange<Int>, in o: [String: Any] = d, at p: String = "") throws(ModelFileError)
            -> Int
        {
            guard let n = o[k] as? Int, r.contains(n) else {
                throw fail("\(p).\(k)", "\(o[k].map { "\($0)" } ?? "missing"): expected an integer in \(r)")
            }
            return n
        }
        func number(_ k: String, in o: [String: Any], at p: String) throws(ModelFileError) -> Float {
            guard let v = o[k] as? Double, v.isFinite, v > 0 else {
                throw fail("\(p).\(k)", "\(o[k].map { "\($0)" } ?? "missing"): expected a positive number")
            }
            return Float(v)
        }
        inputChannels = try int("input_channels", 1...1024)
        backboneChannels = try int("backbone_channels", 1...1024)
        headChannels = try int("head_channels", 1...1024)
        messageChannels = try int("message_channels", 1...255)
        guard try int("geometry_channels", 0...64) == Self.geometryChannels else {
            throw fail(".geometry_channels", "this engine runs the geometry variant (7 channels)")
        }
        guard let dl = d["backbone_dilations"] as? [Int], (1...16).contains(dl.count), dl.allSatisfy((1...8).contains)
        else {
            throw fail(".backbone_dilations", "expected 1 to 16 integers in 1...8")
        }
        dilations = dl
        guard let g = d["grid"] as? [String: Any] else { throw fail(".grid", "missing or not an object") }
        height = try int("height", 1...1024, in: g, at: ".grid")
        width = try int("width", 1...1024, in: g, at: ".grid")
        // Every per-cell buffer is cells × channels floats: bound it before anything is allocated.
        let widest = max(inputChannels, backboneChannels, headChannels) + Self.geometryChannels + 1
        guard height * width * widest <= 1 << 26 else {
            throw fail(
                ".grid", "\(height)×\(width) cells × \(widest) channels exceeds 2^26 values a buffer")
        }
        halfExtent = try number("x_max", in: g, at: ".grid")
        cell = try number("cell", in: g, at: ".grid")
        guard let dec = d["decode"] as? [String: Any], dec["yaw_encoding"] as? String == "double_angle" else {
            throw fail(".decode", "missing, or yaw_encoding is not double_angle")
        }
        peakThreshold = try number("peak_threshold", in: dec, at: ".decode")
        topK = try int("top_k", 1...4096, in: dec, at: ".decode")
        nmsIoU = try number("nms_iou", in: dec, at: ".decode")
        if let p = dec["peaks"] {
            guard let name = p as? String, let rule = HeadDecoder.Peaks(rawValue: name) else {
                throw fail(".decode.peaks", "\(p): expected \"local_max_3x3\" or \"above_threshold\"")
            }
            peaks = rule
        } else {
            peaks = .localMax3x3
        }
        if let m = dec["merge"] {
            guard let name = m as? String, let rule = BoxMerge(rawValue: name) else {
                throw fail(".decode.merge", "\(m): expected \"nms\" or \"weighted\"")
            }
            merge = rule
        } else {
            merge = .nms
        }
    }

    var decoder: HeadDecoder {
        HeadDecoder(
            height: height, width: width, cell: cell, halfExtent: halfExtent, yawFactor: 0.5,
            peakThreshold: peakThreshold, topK: topK, nmsIoU: nmsIoU, peaks: peaks)
    }
}

/// out[cell] = 1 where a cell of its 3×3 neighbourhood inside the grid (row-major cells) is `on`, else 0.
func dilate3x3(height h: Int, width w: Int, into out: UnsafeMutablePointer<UInt8>, _ on: (Int) -> Bool) {
    for i in 0..<h {
        for j in 0..<w {
            var hit: UInt8 = 0
            for ii in max(0, i - 1)...min(h - 1, i + 1) where hit == 0 {
                for jj in max(0, j - 1)...min(w - 1, j + 1) where on(ii * w + jj) {
                    hit = 1
                    break
                }
            }
            out[i * w + j] = hit
        }
    }
}

/// A float convolution read from `{name}.weight` / `{name}.bias`, shapes checked.
func floatConv(
    _ st: Safetensors, _ name: String, in cin: Int, out cout: Int, kernel k: Int = 1, dilation: Int = 1,
    relu: Bool = false
) throws(ModelFileError) -> FloatConv2d {
    FloatConv2d(
        weight: try st.floats("\(name).weight", shape: [cout, cin, k, k]),
        bias: try st.floats("\(name).bias", shape: [cout]), inChannels: cin, outChannels: cout,
        geometry: ConvGeometry(
            kernel: (k, k), padding: (dilation * (k / 2), dilation * (k / 2)), dilation: (dilation, dilation)),
        activation: relu ? .relu : .none)
}

/// A CenterPoint head: a shared 3×3 convolution (ReLU), then 1×1 heatmap (1), offset (2),
/// log size (2) and yaw (sin 2ψ, cos 2ψ). Buffers planned at init.
final class DetectionHead {
    let shared: FloatConv2d
    let heads: [FloatConv2d]
    let hidden: FloatTensor
    let outs: [FloatTensor]

    init(_ st: Safetensors, _ prefix: String, in cin: Int, channels: Int, height h: Int, width w: Int)
        throws(ModelFileError)
    {
        shared = try floatConv(st, "\(prefix).shared", in: cin, out: channels, kernel: 3, relu: true)
        var hs: [FloatConv2d] = []
        for (n, c) in [("heatmap", 1), ("offset", 2), ("size", 2), ("yaw", 2)] {
            hs.append(try floatConv(st, "\(prefix).\(n)", in: channels, out: c))
        }
        heads = hs
        hidden = FloatTensor(height: h, width: w, channels: channels)
        outs = hs.map { FloatTensor(height: h, width: w, channels: $0.outChannels) }
    }

    var convs: [FloatConv2d] { [shared] + heads }

    /// Heatmap logits, offset, log size, yaw; valid until the next run. Cells whose `active` flag
    /// is 0 read `background` (zeros of at least `channels` floats).
    @discardableResult
    func run(_ x: FloatTensor, active: UnsafePointer<UInt8>? = nil, background: UnsafePointer<Float>? = nil)
        -> [FloatTensor]
    {
        shared.run(x, into: hidden, active: active, background: background)
        return runOutputs(active: active, background: background)
    }

    /// The 1×1 outputs on `hidden` as it is (the shared layer computed elsewhere, e.g. in int8).
    @discardableResult
    func runOutputs(active: UnsafePointer<UInt8>? = nil, background: UnsafePointer<Float>? = nil) -> [FloatTensor] {
        for (h, o) in zip(heads, outs) { h.run(hidden, into: o, active: active, background: background) }
        return outs
    }

    /// The same with separate backgrounds: `sharedBackground` for the shared convolution's
    /// inactive outputs, `outBackground` for the heads' (their channels one after another: 1 + 2 + 2 + 2).
    @discardableResult
    func run(
        _ x: FloatTensor, active: UnsafePointer<UInt8>, sharedBackground: UnsafePointer<Float>,
        outBackground: UnsafePointer<Float>
    ) -> [FloatTensor] {
        shared.run(x, into: hidden, active: active, background: sharedBackground)
        var at = 0
        for (h, o) in zip(heads, outs) {
            h.run(hidden, into: o, active: active, background: outBackground + at)
            at += h.outChannels
        }
        return outs
    }
}

/// The agent's half of a deep-fusion model, after the encoder: backbone, its own head (its
/// single-agent detections: the boxes rung and the "alone" baseline), the cells worth sending
/// (σ(own heatmap) > threshold, dilated 3×3) and the message (1×1 compression to K channels).
/// Buffers are planned at init; `run` allocates nothing. Not thread-safe.
public final class DeepAgentStage: @unchecked Sendable {
    public let spec: DeepArchitecture
    let backbone: [FloatConv2d]
    /// The backbone in int8 (`deep.agent.backbone.{k}.int8.*`), when the file has it: it reads the
    /// int8 encoder's output codes (quantization `inputQuant`) and its output is dequantized.
    let qBackbone: [QConv2d]
    /// The int8 backbone's input quantization (`deep.agent.int8.input.qparams`): the encoder output's.
    public let inputQuant: QuantParams?
    /// The own head's shared 3×3 layer in int8 (`deep.agent.head.shared.int8.*`), when the file has
    /// it: it reads the int8 backbone's output codes; its output is dequantized for the float 1×1 outputs.
    let qHead: QConv2d?
    let qa: QTensor, qb: QTensor, qh: QTensor
    let head: DetectionHead
    let compress: FloatConv2d
    let a: FloatTensor, b: FloatTensor
    /// The last message (H × W × K, before quantization).
    public let message: FloatTensor
    /// The last selection: 1 per cell sent, 0 otherwise (every cell when the threshold was ≤ 0).
    public private(set) var sent: [UInt8]
    public var kernels: KernelPath = .default {
        didSet {
            for c in backbone + head.convs + [compress] { c.kernels = kernels }
            for c in qBackbone + (qHead.map { [$0] } ?? []) { c.kernels = kernels }
        }
    }
    public var hasInt8: Bool { !qBackbone.isEmpty }

    public init(_ st: Safetensors, spec: DeepArchitecture) throws(ModelFileError) {
        self.spec = spec
        let (c, bb, h, w) = (spec.inputChannels, spec.backboneChannels, spec.height, spec.width)
        var convs: [FloatConv2d] = []
        for (k, d) in spec.dilations.enumerated() {
            convs.append(
                try floatConv(st, "deep.agent.backbone.\(k)", in: k == 0 ? c : bb, out: bb, kernel: 3, dilation: d,
                    relu: true))
        }
        backbone = convs
        var qc: [QConv2d] = []
        var inQ: QuantParams?
        if st.tensors["deep.agent.int8.input.qparams"] != nil {
            var prev = try st.quantParams("deep.agent.int8.input.qparams")
            inQ = prev
            for (k, d) in spec.dilations.enumerated() {
                let name = "deep.agent.backbone.\(k).int8"
                let cin = k == 0 ? c : bb
                let out = try st.quantParams("\(name).qparams")
                qc.append(
                    QConv2d(
                        weight: try st.array("\(name).weight", as: .i8, shape: [bb, cin, 3, 3]),
                        weightScale: try st.floats("\(name).weight_scale", shape: [bb]),
                        bias: try st.array("\(name).bias", as: .i32, shape: [bb]), inChannels: cin, outChannels: bb,
                        geometry: ConvGeometry(kernel: (3, 3), padding: (d, d), dilation: (d, d)), input: prev,
                        output: out))
                prev = out
            }
        }
        qBackbone = qc
        inputQuant = inQ
        let hq = "deep.agent.head.shared.int8"
        if let last = qc.last, st.tensors["\(hq).weight"] != nil {
            qHead = QConv2d(
                weight: try st.array("\(hq).weight", as: .i8, shape: [spec.headChannels, bb, 3, 3]),
                weightScale: try st.floats("\(hq).weight_scale", shape: [spec.headChannels]),
                bias: try st.array("\(hq).bias", as: .i32, shape: [spec.headChannels]), inChannels: bb,
                outChannels: spec.headChannels, geometry: ConvGeometry(kernel: (3, 3), padding: (1, 1)),
                input: last.output, output: try st.quantParams("\(hq).qparams"))
        } else {
            qHead = nil
        }
        qa = QTensor(height: h, width: w, channels: bb)
        qb = QTensor(height: h, width: w, channels: bb)
        qh = QTensor(height: h, width: w, channels: spec.headChannels)
        head = try DetectionHead(st, "deep.agent.head", in: bb, channels: spec.headChannels, height: h, width: w)
        compress = try floatConv(st, "deep.agent.compress", in: bb, out: spec.messageChannels)
        a = FloatTensor(height: h, width: w, channels: bb)
        b = FloatTensor(height: h, width: w, channels: bb)
        message = FloatTensor(height: h, width: w, channels: spec.messageChannels)
        sent = [UInt8](repeating: 1, count: h * w)
    }

    /// Runs on the encoder's full-width float map `f` (H × W × input channels), float backbone.
    public func run(_ f: FloatTensor, threshold: Float) {
        precondition(f.channels == spec.inputChannels && f.height == spec.height && f.width == spec.width)
        finish(runChain(backbone, from: f, between: a, b) { $0.run($1, into: $2) }, threshold: threshold)
    }

    /// Runs on the int8 encoder's full-width output codes (quantization `inputQuant`), int8
    /// backbone (and the own head's shared layer in int8 where the file has it); requires `hasInt8`.
    public func run(quantized q: QTensor, threshold: Float) {
        precondition(hasInt8 && q.channels == spec.inputChannels && q.height == spec.height && q.width == spec.width)
        let x = runChain(qBackbone, from: q, between: qa, qb) { $0.run($1, into: $2) }
        qBackbone.last!.output.dequantize(x, into: a)
        if let qHead {
            qHead.run(x, into: qh)
            qHead.output.dequantize(qh, into: head.hidden)
        }
        finish(a, threshold: threshold, hiddenReady: qHead != nil)
    }

    /// The int8 backbone's output codes of the last `run(quantized:)`.
    public var backboneCodes: QTensor { qBackbone.count % 2 == 1 ? qa : qb }

    /// The own head's shared layer's int8 output codes of the last `run(quantized:)` (nil without `qHead`).
    public var headCodes: QTensor? { qHead == nil ? nil : qh }

    /// Own head (its shared layer from `x`, unless `hiddenReady`), message, selection.
    private func finish(_ x: FloatTensor, threshold: Float, hiddenReady: Bool = false) {
        let o = hiddenReady ? head.runOutputs() : head.run(x)
        compress.run(x, into: message)
        let (h, w) = (spec.height, spec.width)
        guard threshold > 0 else {
            for i in sent.indices { sent[i] = 1 }
            return
        }
        // σ(heatmap) > threshold, dilated by a 3×3 max (training: max_pool2d(s, 3, 1, 1)).
        let hm = o[0]
        sent.withUnsafeMutableBufferPointer { out in
            dilate3x3(height: h, width: w, into: out.baseAddress!) { 1 / (1 + exp(-hm.storage[$0])) > threshold }
        }
    }

    /// The agent's own detections from the last `run` (its frame).
    public func boxes() -> [BEVBox] { spec.decoder.boxes(head.outs) }

    /// The own head's raw outputs of the last run (heatmap, offset, size, yaw).
    public var headOutputs: [FloatTensor] { head.outs }
}

/// The server's half of a deep-fusion model. An agent's input is its dequantized message with one
/// more channel: H × W × (K + 1), channel K = 1 where the agent sent the cell, 0 elsewhere.
///
/// Per agent, in its own grid, at its sent cells only: `decompress` (1×1, ReLU) and the peer
/// head (its own boxes read from the message). Per (ego, agent): the pose-conditioned 1×1
/// `rotate`, the boxes turned into the ego's frame as 7 geometry channels (`boxes_in_ego`), and the
/// warp (the sent channel warped alongside, valid where > 0.5). Per ego: attention over the agents
/// valid at a cell, the geometry's centre re-expressed as offsets from each ego cell
/// (`cell_relative`), `fuse` (3×3, ReLU), the head, decoding. Mirrors
/// training/slimsplit_train/deep.py `DeepModel.server`.
///
/// Within a pass, an agent's decompress and peer head run once for all egos, keyed by the identity
/// of its input tensor (a pass's inputs are not written while it runs): `preparePass` computes
/// them for the inputs that `beginPass` named, unless an earlier pass did from the same content
/// (detectors made together by `makeFusionDetectors` share them, each worker preparing its share),
/// and `detect` computes any it was not given. Per ego, the fuse convolution and the head compute
/// only the cells whose receptive field holds a cell some agent sent (or reaches the grid's edge);
/// elsewhere their output is what an empty fused map gives, computed once at init: exact, not an
/// approximation. Buffers are planned for `maxAgents` (grown once if more come). Not thread-safe,
/// except as `FusionDetector` says.
public final class DeepFusionDetector: FusionDetector, @unchecked Sendable {
    public let spec: DeepArchitecture
    public var height: Int { spec.height }
    public var width: Int { spec.width }
    public var halfExtent: Float { spec.halfExtent }
    public var cell: Float { spec.cell }
    public var nmsIoU: Float { spec.nmsIoU }
    /// How boxes are merged: the file's `decode.merge` unless set.
    public var merge: BoxMerge
    /// Channels of an agent's input: K message channels and the sent flag.
    public var inputChannels: Int { spec.messageChannels + 1 }
    public private(set) var lastStageSeconds: (warpFuse: Double, head: Double, nms: Double) = (0, 0, 0)
    public var kernels: KernelPath = .default {
        didSet {
            for c in [decompress, fuse, rotate.conv] + peerHead.convs + head.convs { c.kernels = kernels }
        }
    }

    let decompress: FloatConv2d
    let peerHead: DetectionHead
    let rotate: PoseConditionedConv
    /// The attention score's weights over the B + 7 fused channels, and its bias.
    let scoreWeight: [Float], scoreBias: Float
    let fuse: FloatConv2d
    let head: DetectionHead
    let zeros: [Float]
    /// The pass's prepared agents, shared with the detectors made together with this one.
    let pass: DeepPass
    /// Each input's prepared agent in the current `forward` (kept to reuse its storage).
    var slots: [DeepPass.Agent] = []
    /// Per agent of an ego's fusion: rotated map + geometry + sent (B + 8 channels), warped, score.
    var stacked: [FloatTensor] = [], warped: [FloatTensor] = [], scores: [FloatTensor] = []
    /// Per agent of an ego's fusion with `motion`: each cell's moving object (index + 1, 0: none)
    /// where it was (`movedFrom`) and where it is now (`movedTo`), in the agent's grid.
    var movedFrom: [[Int32]] = [], movedTo: [[Int32]] = []
    let rotated: FloatTensor, fused: FloatTensor, y: FloatTensor
    /// Activity per cell: of the fused map, of the fuse convolution's output, of the head's.
    let fusedActive: UnsafeMutableBufferPointer<UInt8>, fuseActive: UnsafeMutableBufferPointer<UInt8>,
        headActive: UnsafeMutableBufferPointer<UInt8>, rows: UnsafeMutableBufferPointer<UInt8>
    /// What an empty fused map gives at an interior cell: fuse's output (B), the head's shared
    /// layer's (head channels) and its outputs' (7), one after another.
    let backgrounds: UnsafeMutableBufferPointer<Float>

    /// `pass`: the per-pass agent state to share with other detectors of the same model (a new one
    /// when nil).
    public convenience init(_ st: Safetensors, spec: DeepArchitecture, maxAgents: Int = 8) throws(ModelFileError) {
        try self.init(st, spec: spec, maxAgents: maxAgents, pass: nil)
    }

    init(_ st: Safetensors, spec: DeepArchitecture, maxAgents: Int, pass shared: DeepPass?) throws(ModelFileError) {
        self.spec = spec
        merge = spec.merge
        pass = shared ?? DeepPass(spec: spec, maxAgents: maxAgents)
        let (k, bb, g) = (spec.messageChannels, spec.backboneChannels, DeepArchitecture.geometryChannels)
        let (h, w) = (spec.height, spec.width)
        decompress = try floatConv(st, "deep.server.decompress", in: k, out: bb, relu: true)
        peerHead = try DetectionHead(st, "deep.server.peer_head", in: bb, channels: spec.headChannels, height: h, width: w)
        rotate = PoseConditionedConv(
            weight: try st.floats("deep.server.rotate.weight", shape: [bb, PoseConditionedConv.terms * bb, 1, 1]),
            bias: try st.floats("deep.server.rotate.bias", shape: [bb]), channels: bb)
        scoreWeight = try st.floats("deep.server.score.weight", shape: [1, bb + g, 1, 1])
        scoreBias = try st.floats("deep.server.score.bias", shape: [1])[0]
        fuse = try floatConv(st, "deep.server.fuse", in: bb + g, out: bb, kernel: 3, relu: true)
        head = try DetectionHead(st, "deep.server.head", in: bb, channels: spec.headChannels, height: h, width: w)
        zeros = [Float](repeating: 0, count: max(bb, spec.headChannels, 16) + 16)
        rotated = FloatTensor(height: h, width: w, channels: bb)
        fused = FloatTensor(height: h, width: w, channels: bb + g)
        y = FloatTensor(height: h, width: w, channels: bb)
        fusedActive = .allocate(capacity: h * w)
        fuseActive = .allocate(capacity: h * w)
        headActive = .allocate(capacity: h * w)
        rows = .allocate(capacity: h * w)
        // The backgrounds: the dense layers on an empty fused map, read at an interior cell.
        fused.reshape(height: h, width: w, channels: bb + g)
        fused.fill(0)
        fuse.run(fused, into: y)
        let o = head.run(y)
        let (ci, cj) = (h / 2, w / 2)
        let values = ([y, head.hidden] + o).flatMap { t in (0..<t.channels).map { t[ci, cj, $0] } }
        backgrounds = .allocate(capacity: values.count)
        _ = backgrounds.initialize(from: values)
        grow(to: maxAgents)
    }

    deinit {
        for b in [fusedActive, fuseActive, headActive, rows] { b.deallocate() }
        backgrounds.deallocate()
    }

    private func grow(to n: Int) {
        let (bb, g) = (spec.backboneChannels, DeepArchitecture.geometryChannels)
        let (h, w) = (spec.height, spec.width)
        while stacked.count < n {
            stacked.append(FloatTensor(height: h, width: w, channels: bb + g + 1))
            movedFrom.append([Int32](repeating: 0, count: h * w))
            movedTo.append([Int32](repeating: 0, count: h * w))
            warped.append(FloatTensor(height: h, width: w, channels: bb + g + 1))
            scores.append(FloatTensor(height: h, width: w, channels: 1))
        }
    }

    /// Names this pass's inputs, each with its content version (nil: unknown): `preparePass` then
    /// prepares those whose version is unknown or differs from what an earlier pass prepared (the
    /// others keep their results). On one thread, before the pass; detectors sharing their pass
    /// state need it called on one of them only.
    public func beginPass(_ inputs: [(FloatTensor, UInt64?)]) { pass.begin(inputs) }

    /// Prepares the named inputs `k` with `k % workers == worker` that need it; workers may run
    /// concurrently (each on its own detector), after `beginPass` and before any `detect` of the pass.
    public func preparePass(worker: Int, workers: Int) {
        let todo = pass.pending
        for k in stride(from: worker, to: todo.count, by: max(1, workers)) { prepare(pass.agents[todo[k]]) }
    }

    /// The agent prepared for `input` in this pass, computing it if no `preparePass` did.
    func prepared(_ input: FloatTensor) -> DeepPass.Agent {
        let a = pass.agent(for: input)
        if a.input !== input || !a.ready { prepare(a, input) }
        return a
    }

    /// Decompress and peer head of an agent's input, at its sent cells.
    func prepare(_ a: DeepPass.Agent, _ given: FloatTensor? = nil) {
        guard let input = given ?? a.input else { return }
        a.input = input
        let k = spec.messageChannels
        precondition(input.channels == k + 1 && input.height == height && input.width == width)
        let m = a.message
        m.reshape(height: height, width: width, channels: k)
        for cell in 0..<(height * width) {
            let src = input.pointer + cell * (k + 1)
            (m.pointer + cell * k).update(from: src, count: k)
            a.sent[cell] = src[k] > 0.5 ? 1 : 0
        }
        zeros.withUnsafeBufferPointer { z in
            let act = UnsafePointer(a.sent.baseAddress!)
            decompress.run(m, into: a.decompressed, active: act, background: z.baseAddress!)
            let o = peerHead.run(a.decompressed, active: act, background: z.baseAddress!)
            let p = a.peer
            for cell in 0..<(height * width) {
                let d = p.pointer + cell * 7
                d[0] = o[0].storage[cell]
                d[1] = o[1].storage[2 * cell]
                d[2] = o[1].storage[2 * cell + 1]
                d[3] = o[2].storage[2 * cell]
                d[4] = o[2].storage[2 * cell + 1]
                d[5] = o[3].storage[2 * cell]
                d[6] = o[3].storage[2 * cell + 1]
            }
            // The agent's own boxes as read from its message (sent cells only): for merging and
            // for the motion of its objects.
            for cell in 0..<(height * width) where a.sent[cell] == 0 { o[0].storage[cell] = -30 }
            a.boxes = spec.decoder.boxes(o)
        }
        a.ready = true
    }

    /// The agent's own boxes as the server reads them from its message (its frame), after the
    /// pass's `preparePass` (computed now if it did not prepare `input`).
    public func ownBoxes(of input: FloatTensor) -> [BEVBox]? { prepared(input).boxes }

    /// Marks, in agent `j`'s grid, the cells of each moving object where it was and where it is
    /// now: cell centres within the box grown by one cell (the cells its message carries it in).
    func markMotion(_ motion: [BoxMotion], agent j: Int) {
        let (h, w) = (height, width)
        for c in 0..<(h * w) {
            movedFrom[j][c] = 0
            movedTo[j][c] = 0
        }
        func mark(_ box: BEVBox, _ label: Int32, now: Bool) {
            // The cells whose centres can lie within the grown box: its circumscribed square.
            let r = ((box.length * box.length + box.width * box.width).squareRoot() / 2 + cell) / cell
            let (ci, cj) = ((box.y + halfExtent) / cell - 0.5, (box.x + halfExtent) / cell - 0.5)
            guard r.isFinite, ci.isFinite, cj.isFinite, abs(ci) < Float(4 * h), abs(cj) < Float(4 * w) else { return }
            let i0 = max(0, Int((ci - r).rounded(.down))), i1 = min(h - 1, Int((ci + r).rounded(.up)))
            let j0 = max(0, Int((cj - r).rounded(.down))), j1 = min(w - 1, Int((cj + r).rounded(.up)))
            guard i0 <= i1, j0 <= j1 else { return }
            for i in i0...i1 {
                for jj in j0...j1 {
                    let p = SIMD2((Float(jj) + 0.5) * cell - halfExtent, (Float(i) + 0.5) * cell - halfExtent)
                    guard box.contains(p, margin: cell) else { continue }
                    if now { movedTo[j][i * w + jj] = label } else { movedFrom[j][i * w + jj] = label }
                }
            }
        }
        for (k, m) in motion.enumerated() where m.shift != .zero {
            mark(m.box, Int32(k + 1), now: false)
            mark(m.now, Int32(k + 1), now: true)
        }
    }

    /// The 2×3 `affine_grid` matrix that samples agent `j`'s grid at the ego grid's cells.
    public func theta(ego: CooperativeDetector.AgentInput, agent j: CooperativeDetector.AgentInput) -> [Float] {
        CooperativeDetector.theta(ego: ego, agent: j, halfExtent: halfExtent)
    }

    /// The fused head's raw outputs for `agents[ego]` (heatmap logits, offset, log size, yaw), each
    /// H × W × C in the ego's grid; valid until the next call.
    public func forward(ego: Int, agents: [CooperativeDetector.AgentInput]) -> [FloatTensor] {
        precondition(agents.indices.contains(ego))
        let t0 = now()
        let (bb, g) = (spec.backboneChannels, DeepArchitecture.geometryChannels)
        let cs = bb + g + 1
        slots.removeAll(keepingCapacity: true)
        for ag in agents { slots.append(prepared(ag.features)) }
        grow(to: agents.count)
        let (h, w) = (height, width)
        for (j, ag) in agents.enumerated() {
            let s = slots[j]
            let th = theta(ego: agents[ego], agent: ag)
            let (c, sn) = (th[0], th[3])
            zeros.withUnsafeBufferPointer { z in
                rotate.run(
                    s.decompressed, cos: c, sin: sn, into: rotated, active: UnsafePointer(s.sent.baseAddress!),
                    background: z.baseAddress!)
            }
            // boxes_in_ego: centre and axis of the box each sent cell predicts, in the ego's frame.
            let (c2, s2) = (c * c - sn * sn, 2 * sn * c)
            let st = stacked[j]
            st.reshape(height: h, width: w, channels: cs)
            let p = s.peer
            let motion = ag.motion ?? []
            let moving = motion.contains { $0.shift != .zero }
            if moving { markMotion(motion, agent: j) }
            for i in 0..<h {
                for jj in 0..<w {
                    let cell = i * w + jj
                    let dst = st.pointer + cell * cs
                    guard s.sent[cell] != 0 else {
                        dst.update(repeating: 0, count: cs)
                        continue
                    }
                    dst.update(from: rotated.pointer + cell * bb, count: bb)
                    let r = p.pointer + cell * 7
                    var cx = (Float(jj) + r[1]) * 2 / Float(w) - 1
                    var cy = (Float(i) + r[2]) * 2 / Float(h) - 1
                    if moving, movedFrom[j][cell] > 0 {
                        // The box this cell predicts, where its object is now.
                        let m = motion[Int(movedFrom[j][cell]) - 1].shift / halfExtent
                        cx += m.x
                        cy += m.y
                    }
                    let dx = cx - th[2]
                    let dy = cy - th[5]
                    dst[bb] = 1 / (1 + exp(-r[0]))
                    dst[bb + 1] = c * dx + sn * dy
                    dst[bb + 2] = -sn * dx + c * dy
                    dst[bb + 3] = r[3]
                    dst[bb + 4] = r[4]
                    dst[bb + 5] = r[5] * c2 - r[6] * s2
                    dst[bb + 6] = r[6] * c2 + r[5] * s2
                    dst[bb + 7] = 1
                }
            }
            warpSent(st, theta: th, agent: j, motion: moving ? motion : [])
        }
        // Attention over the agents whose warped sent flag is > 0.5 at a cell; 0 where none.
        let fc = bb + g
        fused.reshape(height: h, width: w, channels: fc)
        let n = agents.count
        for cell in 0..<(h * w) {
            let dst = fused.pointer + cell * fc
            for q in 0..<fc { dst[q] = 0 }
            var mx = -Float.infinity
            for j in 0..<n where warped[j].storage[cell * cs + cs - 1] > 0.5 { mx = max(mx, scores[j].storage[cell]) }
            fusedActive[cell] = mx.isFinite ? 1 : 0
            guard mx.isFinite else { continue }
            var sum: Float = 0
            for j in 0..<n where warped[j].storage[cell * cs + cs - 1] > 0.5 { sum += exp(scores[j].storage[cell] - mx) }
            for j in 0..<n where warped[j].storage[cell * cs + cs - 1] > 0.5 {
                let wt = exp(scores[j].storage[cell] - mx) / sum
                let src = warped[j].pointer + cell * cs
                for q in 0..<fc { dst[q] += wt * src[q] }
            }
            // cell_relative: the fused centre as an offset from this cell, in cells.
            let has: Float = dst[bb] > 0 ? 1 : 0
            let (i, jj) = (cell / w, cell % w)
            dst[bb + 1] = ((dst[bb + 1] + 1) * Float(w) / 2 - Float(jj)) * has
            dst[bb + 2] = ((dst[bb + 2] + 1) * Float(h) / 2 - Float(i)) * has
        }
        let t1 = now()
        // fuse: an output differs from its background only if an active cell is in its 3×3 field
        // (the fused map is 0 where inactive, as the padding is, so the grid's edge needs no rule).
        dilate3x3(height: h, width: w, into: fuseActive.baseAddress!) { fusedActive[$0] != 0 }
        head.shared.geometry.propagateActivity(
            fuseActive.baseAddress!, height: h, width: w, into: headActive.baseAddress!, scratch: rows.baseAddress!)
        let bg = UnsafePointer(backgrounds.baseAddress!)
        fuse.run(fused, into: y, active: UnsafePointer(fuseActive.baseAddress!), background: bg)
        let o = head.run(
            y, active: UnsafePointer(headActive.baseAddress!), sharedBackground: bg + bb,
            outBackground: bg + bb + spec.headChannels)
        lastStageSeconds = (t1 - t0, now() - t1, 0)
        return o
    }

    /// `PoseWarp.warp` of agent `j`'s stacked map into `warped[j]`, computed only where the warped
    /// sent flag (the last channel) exceeds 0.5, with the attention score there; elsewhere the flag
    /// is 0 and nothing else is written (an invalid cell is never read). With `motion` (marked by
    /// `markMotion`), a point where a moving object is now samples where it was, and a point it
    /// has left samples nothing.
    func warpSent(_ x: FloatTensor, theta: [Float], agent j: Int, motion: [BoxMotion] = []) {
        let (h, w, c) = (height, width, x.channels)
        let y = warped[j]
        let sc = scores[j]
        y.reshape(height: h, width: w, channels: c)
        sc.reshape(height: h, width: w, channels: 1)
        for i in 0..<h {
            let yn = (2 * Float(i) + 1) / Float(h) - 1
            for jj in 0..<w {
                let cell = i * w + jj
                let dst = y.pointer + cell * c
                dst[c - 1] = 0
                let xn = (2 * Float(jj) + 1) / Float(w) - 1
                var sx = theta[0] * xn + theta[1] * yn + theta[2]
                var sy = theta[3] * xn + theta[4] * yn + theta[5]
                if !motion.isEmpty, sx.isFinite, sy.isFinite {
                    let col = Int(((sx + 1) * Float(w) / 2).rounded(.down))
                    let row = Int(((sy + 1) * Float(h) / 2).rounded(.down))
                    if row >= 0, row < h, col >= 0, col < w {
                        if movedTo[j][row * w + col] > 0 {
                            let m = motion[Int(movedTo[j][row * w + col]) - 1].shift / halfExtent
                            sx -= m.x
                            sy -= m.y
                        } else if movedFrom[j][row * w + col] > 0 {
                            continue
                        }
                    }
                }
                let fx = ((sx + 1) * Float(w) - 1) / 2
                let fy = ((sy + 1) * Float(h) - 1) / 2
                guard fx.isFinite, fy.isFinite, fx > -1, fy > -1, fx < Float(w), fy < Float(h) else { continue }
                let x0 = Int(fx.rounded(.down))
                let y0 = Int(fy.rounded(.down))
                let ax = fx - Float(x0)
                let ay = fy - Float(y0)
                // The four corners inside the grid and their weights (as grid_sample, zeros outside).
                var corners = SIMD4<Int>(repeating: -1)
                var weights: SIMD4<Float> = .zero
                var flag: Float = 0
                for k in 0..<4 {
                    let (yy, xx) = (y0 + k / 2, x0 + k % 2)
                    guard yy >= 0, yy < h, xx >= 0, xx < w else { continue }
                    let wt = (k / 2 == 0 ? 1 - ay : ay) * (k % 2 == 0 ? 1 - ax : ax)
                    let src = (yy * w + xx) * c
                    corners[k] = src
                    weights[k] = wt
                    flag += wt * x.storage[src + c - 1]
                }
                guard flag > 0.5 else { continue }
                for q in 0..<c { dst[q] = 0 }
                for k in 0..<4 where corners[k] >= 0 {
                    let wt = weights[k]
                    let p = x.pointer + corners[k]
                    for q in 0..<c { dst[q] += wt * p[q] }
                }
                var s = scoreBias
                for q in 0..<scoreWeight.count { s += scoreWeight[q] * dst[q] }
                sc.storage[cell] = s
            }
        }
    }

    public func detect(
        ego: Int, agents: [CooperativeDetector.AgentInput], fusion: CooperativeDetector.Fusion = .attention
    ) -> [BEVBox] {
        let o = forward(ego: ego, agents: agents)
        let t2 = now()
        defer { lastStageSeconds.nms = now() - t2 }
        let fused = spec.decoder.boxes(o)
        guard merge == .weighted else { return fused }
        // With the boxes each agent's message carries, in the ego's frame: moved to the ego's time
        // where the server tracked their motion; else a late agent's are left out (they are where
        // its objects were: the fused head has already weighed them).
        var all = fused
        let e = agents[ego]
        for (j, ag) in agents.enumerated() {
            if j == ego {
                all += slots[j].boxes
            } else if let motion = ag.motion {
                // The agent's boxes where its objects are at the ego's capture time.
                all += motion.map { $0.now.moved(from: ag.position, ag.yaw, to: e.position, e.yaw) }
            } else if ag.age <= BoxMerge.maxAgeSeconds {
                all += slots[j].boxes.map { $0.moved(from: ag.position, ag.yaw, to: e.position, e.yaw) }
            }
        }
        return RotatedIoU.weightedMean(fused, of: all, iou: BoxMerge.iou, nmsIoU: spec.nmsIoU)
    }
}

/// The per-agent state of a deep-fusion pass that every ego reuses, shared by the detectors of one
/// service. `begin` (one thread) names the pass's inputs and gives each an `Agent`: the one that
/// holds it from the last pass if its content version is unchanged, else a free one to compute
/// (`pending`); workers then fill disjoint pending agents (`DeepFusionDetector.preparePass`) and
/// read them all once every worker is done. Each agent is an object of its own, so a worker writes
/// only memory no other thread touches.
final class DeepPass: @unchecked Sendable {
    /// One agent's prepared input: its message, sent flags, decompressed map and peer boxes (7 raw
    /// channels), for `input`.
    final class Agent {
        weak var input: FloatTensor?
        /// The content version of `input` it was prepared from (nil: unknown, never reused).
        var version: UInt64?
        var ready = false
        let message: FloatTensor, decompressed: FloatTensor, peer: FloatTensor
        let sent: UnsafeMutableBufferPointer<UInt8>
        /// The agent's boxes read from its message (its frame).
        var boxes: [BEVBox] = []

        init(_ spec: DeepArchitecture) {
            let (h, w) = (spec.height, spec.width)
            message = FloatTensor(height: h, width: w, channels: spec.messageChannels)
            decompressed = FloatTensor(height: h, width: w, channels: spec.backboneChannels)
            peer = FloatTensor(height: h, width: w, channels: DeepArchitecture.geometryChannels)
            sent = .allocate(capacity: h * w)
            sent.initialize(repeating: 0)
        }

        deinit { sent.deallocate() }
    }

    let spec: DeepArchitecture
    private(set) var agents: [Agent] = []
    /// The pass's inputs' agents (by input identity), and which of them `preparePass` computes.
    private var index: [ObjectIdentifier: Int] = [:], previous: [ObjectIdentifier: Int] = [:]
    private(set) var pending: [Int] = []
    private var inUse: [Bool] = []

    /// Agents planned for `maxAgents` (more are added on first use).
    init(spec: DeepArchitecture, maxAgents: Int) {
        self.spec = spec
        agents = (0..<maxAgents).map { _ in Agent(spec) }
        inUse = [Bool](repeating: false, count: maxAgents)
    }

    func begin(_ inputs: [(FloatTensor, UInt64?)]) {
        swap(&index, &previous)  // the last pass's, without copying
        index.removeAll(keepingCapacity: true)
        pending.removeAll(keepingCapacity: true)
        for k in inUse.indices { inUse[k] = false }
        // First the inputs an agent already holds, unchanged: they keep it.
        for (t, v) in inputs {
            let id = ObjectIdentifier(t)
            guard let v, index[id] == nil, let k = previous[id] else { continue }
            let a = agents[k]
            if a.ready, a.input === t, a.version == v {
                index[id] = k
                inUse[k] = true
            }
        }
        for (t, v) in inputs where index[ObjectIdentifier(t)] == nil {
            let k = assign(t)
            agents[k].version = v
            pending.append(k)
        }
        computed += pending.count
    }

    /// Inputs given to `preparePass` to compute, over all passes (the others were reused).
    private(set) var computed = 0

    /// A free agent for `input`, to be computed.
    private func assign(_ input: FloatTensor) -> Int {
        let k = inUse.firstIndex(of: false) ?? agents.count
        if k == agents.count {
            agents.append(Agent(spec))
            inUse.append(false)
        }
        inUse[k] = true
        index[ObjectIdentifier(input)] = k
        agents[k].input = input
        agents[k].version = nil
        agents[k].ready = false
        return k
    }

    /// The input's agent, assigned now if `begin` did not name it (single-threaded use).
    func agent(for input: FloatTensor) -> Agent {
        agents[index[ObjectIdentifier(input)] ?? assign(input)]
    }
}

/// What the fusion service runs per ego: today's map fusion (`CooperativeDetector`) or deep fusion.
/// A pass: `beginPass(inputs)` on one thread (on one detector of a set made by
/// `makeFusionDetectors`: they share it), `preparePass` on every worker's detector concurrently,
/// then `detect` for each ego, each worker on its own detector.
public protocol FusionDetector: AnyObject, Sendable {
    var height: Int { get }
    var width: Int { get }
    var halfExtent: Float { get }
    var cell: Float { get }
    var nmsIoU: Float { get }
    /// How boxes from several sources become one list (late fusion; a deep model's fused head).
    var merge: BoxMerge { get set }
    /// Channels of an agent's input tensor.
    var inputChannels: Int { get }
    var lastStageSeconds: (warpFuse: Double, head: Double, nms: Double) { get }
    var kernels: KernelPath { get set }
    /// Called once before each pass with every input tensor the pass fuses and its content
    /// version (a number that changes whenever the tensor is written; nil: unknown).
    func beginPass(_ inputs: [(FloatTensor, UInt64?)])
    /// The per-agent work every ego of the pass reuses, worker `worker` of `workers`' share.
    func preparePass(worker: Int, workers: Int)
    func detect(ego: Int, agents: [CooperativeDetector.AgentInput], fusion: CooperativeDetector.Fusion) -> [BEVBox]
    /// The agent's own detections (its frame) that the server reads from `input`, after
    /// `preparePass`; nil for a model whose maps do not carry them (map fusion).
    func ownBoxes(of input: FloatTensor) -> [BEVBox]?
}

extension FusionDetector {
    /// Forgets the last pass's inputs (before `detect` calls outside a service's pass).
    public func beginPass() { beginPass([]) }
}

extension CooperativeDetector: FusionDetector {
    public var inputChannels: Int { channels }
    public func beginPass(_ inputs: [(FloatTensor, UInt64?)]) {}
    public func preparePass(worker: Int, workers: Int) {}
    public func ownBoxes(of input: FloatTensor) -> [BEVBox]? { nil }
}

/// The server half of a model file: deep fusion when it has `architecture.deep`, else map fusion.
public func makeFusionDetector(_ st: Safetensors, maxAgents: Int = 8) throws(ModelFileError) -> any FusionDetector {
    try makeFusionDetectors(st, count: 1, maxAgents: maxAgents)[0]
}

/// `count` detectors of a model file for a service's worker threads (deep fusion: sharing their
/// pass state, so each agent is prepared once per pass, not once per worker).
public func makeFusionDetectors(_ st: Safetensors, count: Int, maxAgents: Int = 8) throws(ModelFileError)
    -> [any FusionDetector]
{
    if let spec = try DeepArchitecture(st) {
        let pass = DeepPass(spec: spec, maxAgents: maxAgents)
        return try (0..<max(1, count)).map { _ throws(ModelFileError) in
            try DeepFusionDetector(st, spec: spec, maxAgents: maxAgents, pass: pass)
        }
    }
    return try (0..<max(1, count)).map { _ throws(ModelFileError) in try CooperativeDetector(st, maxAgents: maxAgents) }
}
