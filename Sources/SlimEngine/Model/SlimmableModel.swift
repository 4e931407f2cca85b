/// A model file loaded and checked: per width index, every layer's BN-folded float weights and,
/// when the file has them, its int8 weights and activation quantization.
public struct SlimmableModel: Sendable {
    public struct FloatLayer: Sendable {
        public var weight: [Float]  // [co, ci/groups, kh, kw]
        public var bias: [Float]  // [co]
    }

    public struct Int8Layer: Sendable {
        public var weight: [Int8]
        public var weightScale: [Float]
        public var bias: [Int32]
        public var output: QuantParams
    }

    public let architecture: Architecture
    public let file: String
    /// [width][layer]
    public let float: [[FloatLayer]]
    /// [width][layer], nil when the file has no int8 tensors.
    public let int8: [[Int8Layer]]?
    /// Input quantization per width (int8 only).
    public let inputQuant: [QuantParams]?

    public init(contentsOf path: String) throws(ModelFileError) {
        try self.init(Safetensors(contentsOf: path))
    }

    public init(_ st: Safetensors) throws(ModelFileError) {
        file = st.file
        func fail(_ subject: String, _ problem: String) -> ModelFileError {
            ModelFileError(kind: .architecture, file: st.file, subject: subject, problem: problem)
        }
        guard st.metadata["format"] == "slimsplit-model" else {
            throw fail("__metadata__.format", "is \(st.metadata["format"] ?? "missing"), expected slimsplit-model")
        }
        guard st.metadata["format_version"] == "1" else {
            throw fail(
                "__metadata__.format_version", "is \(st.metadata["format_version"] ?? "missing"), this reader knows 1")
        }
        guard let json = st.metadata["architecture"] else { throw fail("__metadata__.architecture", "missing") }
        let arch = try Architecture.parse(json, file: st.file)
        architecture = arch
        var floats: [[FloatLayer]] = []
        var ints: [[Int8Layer]] = []
        var inputQ: [QuantParams] = []
        let hasInt8 = st.tensors["\(arch.input.name).int8.0.qparams"] != nil
        for wi in arch.widths.indices {
            var fl: [FloatLayer] = []
            var il: [Int8Layer] = []
            for l in arch.layers {
                let kh = l.kernel[0]
                let kw = l.kernel[1]
                let taps = kh * kw
                let ciFull = l.inChannels / l.groups
                let w = try st.floats("\(l.name).weight", shape: [l.outChannels, ciFull, kh, kw])
                let b = l.bias ? try st.floats("\(l.name).bias", shape: [l.outChannels]) : nil
                let co = arch.active(l.outChannels, slim: l.slimOut, width: wi)
                let depthwise = l.groups > 1 && l.groups == l.inChannels
                let ci = depthwise ? 1 : arch.active(l.inChannels, slim: l.slimIn, width: wi) / l.groups
                var ws = [Float](repeating: 0, count: co * ci * taps)
                for o in 0..<co {
                    for i in 0..<ci {
                        for t in 0..<taps { ws[(o * ci + i) * taps + t] = w[(o * ciFull + i) * taps + t] }
                    }
                }
                var bs = b.map { Array($0[0..<co]) } ?? [Float](repeating: 0, count: co)
                if let bn = l.batchNorm {
                    let prefix = bn == "switchable" ? "\(l.name).bn.\(wi)" : "\(l.name).bn"
                    let n = bn == "switchable" ? co : l.outChannels
                    let g = try st.floats("\(prefix).weight", shape: [n])
                    let be = try st.floats("\(prefix).bias", shape: [n])
                    let m = try st.floats("\(prefix).running_mean", shape: [n])
                    let v = try st.floats("\(prefix).running_var", shape: [n])
                    guard v.allSatisfy({ $0 >= 0 && $0.isFinite }) else {
                        throw fail("\(prefix).running_var", "negative or non-finite variance")
                    }
                    (ws, bs) = foldBatchNorm(
                        weight: ws, bias: bs, outChannels: co, gamma: Array(g[0..<co]), beta: Array(be[0..<co]),
                        mean: Array(m[0..<co]), variance: Array(v[0..<co]), eps: Float(l.bnEps ?? 1e-5))
                }
                fl.append(FloatLayer(weight: ws, bias: bs))
                if hasInt8 {
                    let p = "\(l.name).int8.\(wi)"
                    let q: [Int8] = try st.array("\(p).weight", as: .i8, shape: [co, ci, kh, kw])
                    guard !q.contains(-128) else {
                        throw fail("\(p).weight", "symmetric int8 weights lie in [-127, 127]")
                    }
                    let scale = try st.floats("\(p).weight_scale", shape: [co])
                    guard scale.allSatisfy({ $0 > 0 && $0.isFinite }) else {
                        throw fail("\(p).weight_scale", "scales must be finite and > 0")
                    }
                    let bias: [Int32] = try st.array("\(p).bias", as: .i32, shape: [co])
                    il.append(
                        Int8Layer(
                            weight: q, weightScale: scale, bias: bias,
                            output: try st.quantParams("\(l.name).int8.\(wi).qparams")))
                }
            }
            floats.append(fl)
            if hasInt8 {
                ints.append(il)
                inputQ.append(try st.quantParams("\(arch.input.name).int8.\(wi).qparams"))
            }
        }
        float = floats
        int8 = hasInt8 ? ints : nil
        inputQuant = hasInt8 ? inputQ : nil
    }
}

extension Safetensors {
    /// An activation's uint8 quantization (F32 [2]: scale, zero point), checked: a finite scale
    /// > 0 and a whole zero point in 0...255, else a `ModelFileError` naming the tensor.
    public func quantParams(_ name: String) throws(ModelFileError) -> QuantParams {
        let v = try floats(name, shape: [2])
        guard v[0] > 0, v[0].isFinite, v[1] >= 0, v[1] <= 255, v[1] == v[1].rounded() else {
            throw ModelFileError(
                kind: .tensor, file: file, subject: name,
                problem: "scale must be > 0 and the zero point an integer in 0...255, got \(v)")
        }
        return QuantParams(scale: v[0], zeroPoint: Int32(v[1]))
    }
}
