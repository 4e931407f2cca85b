import Foundation
import SlimCore
import SlimEngine

/// The server half of the cooperative detector (`server` in the model file): zero fill, the
/// pose-conditioned channel mixing `rotate` (when the model has it), warp of every agent's
/// features into the ego's grid, fusion across agents (attention or max), a convolutional
/// backbone and a CenterPoint-style head, decoded to boxes with rotated NMS.
///
/// Buffers are planned at `init` for `maxAgents` (grown once if more come); `detect` allocates only its result.
/// Not thread-safe.
public final class CooperativeDetector: @unchecked Sendable {
    public enum Fusion: String, Sendable { case attention, max }

    /// One agent's contribution: dequantized features (H × W × C, C ≤ the model's channels, the
    /// first C channels of the full map) and its pose in a common frame.
    public struct AgentInput: @unchecked Sendable {
        public var features: FloatTensor
        public var position: SIMD2<Float>
        public var yaw: Float
        /// Seconds by which this agent's data was captured before the ego's (0: as current).
        public var age: Float
        /// The agent's objects (every box the server reads from its map) and how far each moves
        /// between its capture and the ego's (zero: static or unknown; backwards for a message
        /// newer than the ego's); nil: not estimated. Deep fusion moves the cells and boxes of the
        /// moving ones there and merges the boxes as current ones; map fusion ignores it.
        public var motion: [BoxMotion]?
        public init(
            features: FloatTensor, position: SIMD2<Float>, yaw: Float, age: Float = 0, motion: [BoxMotion]? = nil
        ) {
            self.features = features
            self.position = position
            self.yaw = yaw
            self.age = age
            self.motion = motion
        }
    }

    public let channels: Int, height: Int, width: Int
    public let halfExtent: Float, cell: Float
    public var peakThreshold: Float = 0.05
    /// Seconds spent in the last `detect`: warp + fuse, backbone + head, decode + NMS.
    public private(set) var lastStageSeconds: (warpFuse: Double, head: Double, nms: Double) = (0, 0, 0)
    public var topK = 60
    public var nmsIoU: Float = 0.1
    /// How late fusion merges boxes with this detector's (the map model's files: NMS).
    public var merge: BoxMerge = .nms

    let score: FloatConv2d
    let rotate: PoseConditionedConv?
    /// 0.5 when the yaw head predicts (sin 2ψ, cos 2ψ) (`decode.yaw_encoding` = `double_angle`).
    let yawFactor: Float
    let backbone: [FloatConv2d]
    let shared: FloatConv2d
    let heads: [FloatConv2d]  // heatmap, offset, size, yaw
    let filled: FloatTensor, rotated: FloatTensor, ones: FloatTensor, validMap: FloatTensor
    var warped: [FloatTensor], valid: [FloatTensor], scores: [FloatTensor]
    let fused: FloatTensor, a: FloatTensor, b: FloatTensor
    let outs: [FloatTensor]
    // Optional int8 backbone + shared head (server.*.int8.*): the fused map is quantized once.
    let qInput: QuantParams?
    let qConvs: [QConv2d]
    /// head.shared in int8 with float output (`server.head.shared.int8.*`), when the file has it.
    let qShared: QConv2d?
    let qIn: QTensor, qa: QTensor, qb: QTensor
    /// The fused map's cell activity from its quantization (unused: the backbone runs dense; on the
    /// held-out recordings about 5 % of the fused map's cells have a 3×3 neighbourhood of equal codes).
    var qActive: [UInt8]
    /// Per agent: the cells of its map that the warp into the ego's grid reads (`PoseWarp.markSources`);
    /// the rotation runs only there. Zeros: the background of the cells it skips (never read).
    var sources: [UInt8]
    let zeros: [Float]
    /// Per agent of the last `forward`: whether any of its cells lands in the ego's grid.
    var overlaps: [Bool]
    /// Rotate only the cells the warp reads (on by default; off: every cell, for the tests).
    var rotateReadCellsOnly = true
    /// Run the backbone in int8 when the model file has it (on by default).
    public var useInt8: Bool
    /// With `useInt8`, run head.shared in int8 too (float output) when the file has it.
    var int8Head = true
    /// The kernel path of every convolution (the process default unless set).
    public var kernels: KernelPath = .default {
        didSet {
            for c in [score, shared] + backbone + heads + (rotate.map { [$0.conv] } ?? []) { c.kernels = kernels }
            for c in qConvs + (qShared.map { [$0] } ?? []) { c.kernels = kernels }
        }
    }
    public var hasInt8: Bool { !qConvs.isEmpty }

    /// - Parameter st: the model file; reads `__metadata__.architecture.server` and `server.*`.
    public init(_ st: Safetensors, maxAgents: Int = 8) throws(ModelFileError) {
        func fail(_ s: String, _ p: String) -> ModelFileError {
            ModelFileError(kind: .architecture, file: st.file, subject: s, problem: p)
        }
        guard let archText = st.metadata["architecture"],
            let arch = try? JSONSerialization.jsonObject(with: Data(archText.utf8)) as? [String: Any],
            let server = arch["server"] as? [String: Any], let input = server["input"] as? [String: Any],
            let layers = server["layers"] as? [[String: Any]], let grid = input["grid"] as? [String: Any]
        else {
            throw fail("architecture.server", "missing or not an object with input, grid and layers")
        }
        func dimension(_ key: String, default d: Int, max m: Int) throws(ModelFileError) -> Int {
            guard let v = input[key] else { return d }
            guard let n = v as? Int, (1...m).contains(n) else {
                throw fail("architecture.server.input.\(key)", "\(v) is not an integer in 1...\(m)")
            }
            return n
        }
        channels = try dimension("channels", default: 64, max: 4096)
        height = try dimension("height", default: 32, max: 1024)
        width = try dimension("width", default: 32, max: 1024)
        guard let xMax = (grid["x_max"] ?? 32.0) as? Double, xMax.isFinite, xMax > 0,
            let cellSize = (grid["cell"] ?? 2.0) as? Double, cellSize.isFinite, cellSize > 0
        else {
            throw fail("architecture.server.input.grid", "x_max and cell must be positive numbers")
        }
        halfExtent = Float(xMax)
        cell = Float(cellSize)
        let specs = try layers.enumerated().map { (i, l) throws(ModelFileError) in
            try ServerLayer(l, index: i, fail: fail)
        }
        var convs: [String: FloatConv2d] = [:]
        for l in specs where l.type == "conv2d" {
            let (name, cin, cout, k, p, d) = (l.name, l.inChannels, l.outChannels, l.kernel, l.padding, l.dilation)
            let w = try st.floats("server.\(name).weight", shape: [cout, cin, k[0], k[1]])
            let bias = try st.floats("server.\(name).bias", shape: [cout])
            let act: Activation = l.activation == "relu" ? .relu : .none
            convs[name] = FloatConv2d(
                weight: w, bias: bias, inChannels: cin, outChannels: cout,
                geometry: ConvGeometry(kernel: (k[0], k[1]), padding: (p[0], p[1]), dilation: (d[0], d[1])),
                activation: act)
        }
        let sw = try st.floats("server.fusion.score.weight", shape: [1, channels, 1, 1])
        let sb = try st.floats("server.fusion.score.bias", shape: [1])
        score = FloatConv2d(
            weight: sw, bias: sb, inChannels: channels, outChannels: 1, geometry: ConvGeometry(kernel: (1, 1)))
        if let l = layers.first(where: { $0["name"] as? String == "rotate" }) {
            guard l["type"] as? String == "pose_conditioned_conv1x1",
                (l["terms"] as? [String])?.count == PoseConditionedConv.terms
            else {
                throw fail(
                    "architecture.server.layers.rotate",
                    "expected type pose_conditioned_conv1x1 with \(PoseConditionedConv.terms) terms")
            }
            let k = PoseConditionedConv.terms
            rotate = PoseConditionedConv(
                weight: try st.floats("server.fusion.rotate.weight", shape: [channels, k * channels, 1, 1]),
                bias: try st.floats("server.fusion.rotate.bias", shape: [channels]), channels: channels)
        } else {
            rotate = nil
        }
        let decode = server["decode"] as? [String: Any]
        switch decode?["yaw_encoding"] as? String {
        case nil, "angle": yawFactor = 1
        case "double_angle": yawFactor = 0.5
        case let other?:
            throw fail("architecture.server.decode.yaw_encoding", "unknown '\(other)' (angle | double_angle)")
        }
        let names = layers.compactMap { $0["name"] as? String }
        backbone = try names.filter { $0.hasPrefix("backbone.") }.map { n throws(ModelFileError) in
            guard let c = convs[n] else { throw fail("server.\(n)", "missing") }
            return c
        }
        guard let sh = convs["head.shared"], let hm = convs["head.heatmap"], let off = convs["head.offset"],
            let sz = convs["head.size"], let yw = convs["head.yaw"], !backbone.isEmpty
        else {
            throw fail(
                "architecture.server.layers",
                "needs backbone.*, head.shared, head.heatmap, head.offset, head.size, head.yaw")
        }
        shared = sh
        heads = [hm, off, sz, yw]
        let (h, w) = (height, width)
        let mk = { (c: Int) in FloatTensor(height: h, width: w, channels: c) }
        filled = FloatTensor(height: height, width: width, channels: channels)
        rotated = FloatTensor(height: height, width: width, channels: channels)
        ones = FloatTensor(height: height, width: width, channels: 1)
        ones.fill(1)
        validMap = FloatTensor(height: height, width: width, channels: 1)
        var wa: [FloatTensor] = []
        var va: [FloatTensor] = []
        var sc: [FloatTensor] = []
        for _ in 0..<maxAgents {
            wa.append(mk(channels))
            va.append(mk(1))
            sc.append(mk(1))
        }
        warped = wa
        valid = va
        scores = sc
        let widest = max(channels, backbone.map(\.outChannels).max()!, sh.outChannels)
        fused = FloatTensor(height: height, width: width, channels: channels)
        a = FloatTensor(height: height, width: width, channels: widest)
        b = FloatTensor(height: height, width: width, channels: widest)
        outs = [hm, off, sz, yw].map { mk($0.outChannels) }
        // Int8 backbone, when calibrated (training/calibrate_server.py).
        var qc: [QConv2d] = []
        var qin: QuantParams?
        var qsh: QConv2d?
        if st.tensors["server.int8.input.qparams"] != nil {
            qin = try st.quantParams("server.int8.input.qparams")
            var prev = qin!
            // The backbone requantized layer to layer; head.shared on the last one's codes, with
            // float output: its small sin/cos yaw outputs do not survive a per-tensor output
            // quantization (measured: AP@0.5 halves), but its int8 weights cost nothing measurable
            // when the sums are dequantized per channel instead (docs/benchmarks.md).
            for name in names where name.hasPrefix("backbone.") || name == "head.shared" {
                guard let l = specs.first(where: { $0.name == name }) else { continue }
                if name == "head.shared", st.tensors["server.head.shared.int8.weight"] == nil { continue }
                let (cin, cout, k, p, d) = (l.inChannels, l.outChannels, l.kernel, l.padding, l.dilation)
                let w: [Int8] = try st.array("server.\(name).int8.weight", as: .i8, shape: [cout, cin, k[0], k[1]])
                let ws = try st.floats("server.\(name).int8.weight_scale", shape: [cout])
                let b: [Int32] = try st.array("server.\(name).int8.bias", as: .i32, shape: [cout])
                let out = try st.quantParams("server.\(name).int8.qparams")
                let conv = QConv2d(
                    weight: w, weightScale: ws, bias: b, inChannels: cin, outChannels: cout,
                    geometry: ConvGeometry(kernel: (k[0], k[1]), padding: (p[0], p[1]), dilation: (d[0], d[1])),
                    input: prev, output: out)
                if name == "head.shared" {
                    guard l.activation == "relu", cin == backbone.last?.outChannels, cout == sh.outChannels else {
                        throw fail("server.head.shared.int8", "does not match head.shared (\(cin) → \(cout), ReLU)")
                    }
                    qsh = conv
                } else {
                    qc.append(conv)
                    prev = out
                }
            }
        }
        qConvs = qc
        qShared = qsh
        qInput = qin
        useInt8 = !qc.isEmpty
        qIn = QTensor(height: h, width: w, channels: channels)
        qActive = [UInt8](repeating: 0, count: h * w)
        sources = [UInt8](repeating: 0, count: h * w)
        zeros = [Float](repeating: 0, count: channels)
        overlaps = [Bool](repeating: false, count: maxAgents)
        qa = QTensor(height: h, width: w, channels: widest)
        qb = QTensor(height: h, width: w, channels: widest)
    }

    /// The 2×3 `affine_grid` matrix that samples agent `j`'s grid at the ego grid's cells:
    /// p_j = R(yaw_e − yaw_j)·p_e + R(−yaw_j)(t_e − t_j), in units of the half extent.
    public func theta(ego: AgentInput, agent j: AgentInput) -> [Float] {
        Self.theta(ego: ego, agent: j, halfExtent: halfExtent)
    }

    /// `theta(ego:agent:)` for a grid of half extent `halfExtent` metres (every fusion grid's warp).
    public static func theta(ego: AgentInput, agent j: AgentInput, halfExtent: Float) -> [Float] {
        let d = ego.yaw - j.yaw
        let c = cos(d)
        let s = sin(d)
        let t = Pose2D(j.position, yaw: j.yaw).toLocal(ego.position) / halfExtent
        return [c, -s, t.x, s, c, t.y]
    }

    /// The raw head outputs for the ego `agents[ego]` (heatmap logits, offset, log size, yaw
    /// sin/cos), each H × W × C. Valid until the next call. More agents than planned for grow the
    /// per-agent buffers once (an allocation at the first such call, none after).
    public func forward(ego: Int, agents: [AgentInput], fusion: Fusion = .attention) -> [FloatTensor] {
        precondition(agents.indices.contains(ego))
        while warped.count < agents.count {
            warped.append(FloatTensor(height: height, width: width, channels: channels))
            valid.append(FloatTensor(height: height, width: width, channels: 1))
            scores.append(FloatTensor(height: height, width: width, channels: 1))
            overlaps.append(false)
        }
        let t0 = now()
        for (j, ag) in agents.enumerated() {
            let f = ag.features
            let th = theta(ego: agents[ego], agent: ag)
            // The cells of this agent's map that the warp reads: the rotation runs only there (an
            // agent whose grid does not reach the ego's is left out), the same values bit for bit.
            var read = f.height * f.width
            if !PoseWarp.isIdentity(th), rotate != nil, rotateReadCellsOnly {
                read = sources.withUnsafeMutableBufferPointer {
                    PoseWarp.markSources(
                        theta: th, height: height, width: width, inputHeight: f.height, inputWidth: f.width,
                        into: $0.baseAddress!)
                }
            }
            overlaps[j] = read > 0
            guard read > 0 else { continue }
            // Zero fill to the full channel count (a full map is read as it is).
            var src = f
            if f.channels != channels {
                filled.reshape(height: f.height, width: f.width, channels: channels)
                filled.fill(0)
                for cellIndex in 0..<(f.height * f.width) {
                    (filled.pointer + cellIndex * channels).update(
                        from: f.pointer + cellIndex * f.channels, count: min(f.channels, channels))
                }
                src = filled
            }
            if let rotate {
                if read < f.height * f.width {
                    sources.withUnsafeBufferPointer { m in
                        zeros.withUnsafeBufferPointer { z in
                            rotate.run(
                                src, cos: th[0], sin: th[3], into: rotated, active: m.baseAddress!, background: z.baseAddress!)
                        }
                    }
                } else {
                    rotate.run(src, cos: th[0], sin: th[3], into: rotated)
                }
                src = rotated
            }
            PoseWarp.warp(src, theta: th, height: height, width: width, into: warped[j])
            PoseWarp.warp(ones, theta: th, height: height, width: width, into: valid[j])
            if fusion == .attention { score.run(warped[j], into: scores[j]) }
        }
        fused.reshape(height: height, width: width, channels: channels)
        let n = agents.count
        for cellIndex in 0..<(height * width) {
            let dst = fused.pointer + cellIndex * channels
            switch fusion {
            case .max:
                for c in 0..<channels {
                    var m = -Float.infinity
                    for j in 0..<n where overlaps[j] && valid[j].storage[cellIndex] > 0.5 {
                        m = max(m, warped[j].storage[cellIndex * channels + c])
                    }
                    dst[c] = m.isFinite ? m : 0
                }
            case .attention:
                var mx = -Float.infinity
                for j in 0..<n where overlaps[j] && valid[j].storage[cellIndex] > 0.5 {
                    mx = max(mx, scores[j].storage[cellIndex])
                }
                for c in 0..<channels { dst[c] = 0 }
                guard mx.isFinite else { continue }
                var sum: Float = 0
                for j in 0..<n where overlaps[j] && valid[j].storage[cellIndex] > 0.5 {
                    sum += exp(scores[j].storage[cellIndex] - mx)
                }
                for j in 0..<n where overlaps[j] && valid[j].storage[cellIndex] > 0.5 {
                    let w = exp(scores[j].storage[cellIndex] - mx) / sum
                    let src = warped[j].pointer + cellIndex * channels
                    for c in 0..<channels { dst[c] += w * src[c] }
                }
            }
        }
        let t1 = now()
        var y = a
        if useInt8, let qp = qInput, let last = qConvs.last {
            // Quantize the fused map (ONNX QuantizeLinear), int8 chain, dequantize for the heads.
            qActive.withUnsafeMutableBufferPointer { qp.quantize(fused, into: qIn, activity: $0.baseAddress!) }
            let qx = runChain(qConvs, from: qIn, between: qa, qb) { $0.run($1, into: $2) }
            if int8Head, let qShared {
                qShared.run(qx, intoFloat: y, relu: true)
            } else {
                let x = b
                last.output.dequantize(qx, into: x)
                shared.run(x, into: y)
            }
        } else {
            let x = runChain(backbone, from: fused, between: a, b) { $0.run($1, into: $2) }
            y = x === a ? b : a
            shared.run(x, into: y)
        }
        for (h, out) in zip(heads, outs) { h.run(y, into: out) }
        lastStageSeconds = (t1 - t0, now() - t1, 0)
        return outs
    }

    /// Boxes in the ego's frame: heatmap peaks (3×3 local maxima above `peakThreshold`, the top
    /// `topK`), then rotated NMS.
    public func detect(ego: Int, agents: [AgentInput], fusion: Fusion = .attention) -> [BEVBox] {
        let o = forward(ego: ego, agents: agents, fusion: fusion)
        let t2 = now()
        defer { lastStageSeconds.nms = now() - t2 }
        return HeadDecoder(
            height: height, width: width, cell: cell, halfExtent: halfExtent, yawFactor: yawFactor,
            peakThreshold: peakThreshold, topK: topK, nmsIoU: nmsIoU
        ).boxes(o)
    }
}

/// One layer of `architecture.server.layers`, checked: a convolution's name, channels and 2-D
/// kernel, padding and dilation are of the right types and in range (a hostile model file gets a
/// `ModelFileError` naming the key, never a crash or a huge allocation).
struct ServerLayer {
    let name: String, type: String
    let inChannels: Int, outChannels: Int
    let kernel: [Int], padding: [Int], dilation: [Int]
    let activation: String?

    init(_ l: [String: Any], index: Int, fail: (String, String) -> ModelFileError) throws(ModelFileError) {
        let at = "architecture.server.layers[\(index)]"
        guard let name = l["name"] as? String, !name.isEmpty else {
            throw fail("\(at).name", "missing or not a string")
        }
        self.name = name
        type = l["type"] as? String ?? ""
        activation = l["activation"] as? String
        guard type == "conv2d" else {
            inChannels = 0
            outChannels = 0
            kernel = []
            padding = []
            dilation = []
            return
        }
        func count(_ key: String) throws(ModelFileError) -> Int {
            guard let n = l[key] as? Int, (1...4096).contains(n) else {
                throw fail("\(at).\(key)", "\(l[key].map { "\($0)" } ?? "missing"): expected an integer in 1...4096")
            }
            return n
        }
        func pair(_ key: String, _ range: ClosedRange<Int>) throws(ModelFileError) -> [Int] {
            guard let v = l[key] as? [Int], v.count == 2, v.allSatisfy(range.contains) else {
                throw fail("\(at).\(key)", "\(l[key].map { "\($0)" } ?? "missing"): expected two integers in \(range)")
            }
            return v
        }
        inChannels = try count("in_channels")
        outChannels = try count("out_channels")
        kernel = try pair("kernel", 1...7)
        padding = try pair("padding", 0...16)
        dilation = try pair("dilation", 1...16)
    }
}

/// The server's `rotate` layer: per agent, a 1×1 convolution whose weight depends on the agent's
/// yaw relative to the ego, a = yaw_ego − yaw_agent:
/// W(a) = W₀ + cos a·W₁ + sin a·W₂ + cos 2a·W₃ + sin 2a·W₄ (model file: weight [C, 5C, 1, 1],
/// input channel k·C + c is term k of channel c). W(a) is assembled in the packed layout of one
/// `FloatConv2d` before each run: 5 × C × C/16 vector multiply-adds, no allocation.
final class PoseConditionedConv {
    static let terms = 5
    let conv: FloatConv2d
    let banks: [FloatConv2d]

    init(weight: [Float], bias: [Float], channels c: Int) {
        let g = ConvGeometry(kernel: (1, 1))
        banks = (0..<Self.terms).map { k in
            var w = [Float](repeating: 0, count: c * c)
            for o in 0..<c { for i in 0..<c { w[o * c + i] = weight[o * Self.terms * c + k * c + i] } }
            return FloatConv2d(weight: w, bias: nil, inChannels: c, outChannels: c, geometry: g)
        }
        conv = FloatConv2d(
            weight: [Float](repeating: 0, count: c * c), bias: bias, inChannels: c, outChannels: c, geometry: g)
    }

    /// y = W(a)·x + bias, with `cos` = cos a and `sin` = sin a (outputs whose `active` flag is 0
    /// are `background` instead, as `FloatConv2d.run`).
    func run(
        _ x: FloatTensor, cos c: Float, sin s: Float, into y: FloatTensor, active: UnsafePointer<UInt8>? = nil,
        background: UnsafePointer<Float>? = nil
    ) {
        let t1 = c
        let t2 = s
        let t3 = c * c - s * s
        let t4 = 2 * s * c
        let dst = conv.packed
        let b0 = banks[0].packed
        let b1 = banks[1].packed
        let b2 = banks[2].packed
        let b3 = banks[3].packed
        let b4 = banks[4].packed
        let v1 = SIMD16<Float>(repeating: t1)
        let v2 = SIMD16<Float>(repeating: t2)
        let v3 = SIMD16<Float>(repeating: t3)
        let v4 = SIMD16<Float>(repeating: t4)
        for i in 0..<dst.count {
            // Multiply and add, not addProduct: without an FMA target that is a libm fmaf call per lane.
            let a: SIMD16<Float> = b0[i] + v1 * b1[i]
            let b: SIMD16<Float> = v2 * b2[i] + v3 * b3[i]
            dst[i] = a + b + v4 * b4[i]
        }
        conv.run(x, into: y, active: active, background: background)
    }
}

/// CenterPoint decoding shared by every detector head: candidate cells (`peaks`) whose sigmoid
/// exceeds `peakThreshold`, the `topK` best (ties by cell index), each a box at
/// ((column, row) + offset) · cell − halfExtent with size exp(clamp(log size, −3, 4)) and yaw
/// `yawFactor` · atan2(sin, cos), then rotated NMS at `nmsIoU` (training/slimsplit_train/coop.py `decode`).
public struct HeadDecoder: Sendable {
    /// Which cells above the threshold become candidate boxes (a model file's `decode.peaks`).
    public enum Peaks: String, Sendable {
        /// Only the maximum of its 3×3 neighbourhood (CenterPoint): of two centres in neighbouring
        /// cells, one box survives.
        case localMax3x3 = "local_max_3x3"
        /// Every cell: NMS, not the grid, separates neighbours (a cell beside a centre regresses a
        /// box near that centre's, which NMS removes).
        case aboveThreshold = "above_threshold"
    }

    public var height: Int, width: Int
    public var cell: Float, halfExtent: Float, yawFactor: Float
    public var peakThreshold: Float, topK: Int, nmsIoU: Float
    public var peaks: Peaks = .localMax3x3

    /// - Parameter o: heatmap logits (1 channel), offset (2), log size (2), yaw (2), each H × W.
    public func boxes(_ o: [FloatTensor]) -> [BEVBox] {
        let hm = o[0]
        let off = o[1]
        let size = o[2]
        let yaw = o[3]
        var cands: [(Float, Int)] = []
        for i in 0..<height {
            for j in 0..<width {
                let v = hm[i, j, 0]
                var peak = true
                if peaks == .localMax3x3 {
                    for di in -1...1 {
                        for dj in -1...1 where (di != 0 || dj != 0) {
                            let ii = i + di
                            let jj = j + dj
                            if ii >= 0, ii < height, jj >= 0, jj < width, hm[ii, jj, 0] > v { peak = false }
                        }
                    }
                }
                let s = 1 / (1 + exp(-v))
                if peak, s > peakThreshold { cands.append((s, i * width + j)) }
            }
        }
        cands.sort { $0.0 > $1.0 || ($0.0 == $1.0 && $0.1 < $1.1) }
        let boxes = cands.prefix(topK).map { (s, idx) -> BEVBox in
            let i = idx / width
            let j = idx % width
            let l = exp(min(max(size[i, j, 0], -3), 4))
            let w = exp(min(max(size[i, j, 1], -3), 4))
            return BEVBox(
                x: (Float(j) + off[i, j, 0]) * cell - halfExtent, y: (Float(i) + off[i, j, 1]) * cell - halfExtent,
                length: l, width: w, yaw: yawFactor * atan2(yaw[i, j, 0], yaw[i, j, 1]), score: s)
        }
        return RotatedIoU.nms(boxes, threshold: nmsIoU)
    }
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
