import SlimCore
import SlimEngine
import SlimPerception
import SlimSensors
import SlimWire

/// What an agent's feature frames carry: per-channel codes of `bits` bits, or residual-codebook
/// indices (PROTOCOL.md §4.2, `quant_mode` 2). The names are those of `source.payload` and `--payload`.
public enum MessagePayload: String, CaseIterable, Sendable {
    case scalar, codebook
    /// "scalar or codebook", for error messages.
    public static var names: String { allCases.map(\.rawValue).joined(separator: " or ") }
}

/// The agent's per-frame pipeline up to the wire: points → BEV grid → int8 encoder at the
/// current width → per-channel quantization to the current bit depth → optional cell mask.
///
/// With a deep-fusion model (`architecture.deep`) the encoder runs at full width and its map goes
/// through the model's agent stage (`DeepAgentStage`: backbone, int8 where the file has it and the
/// encoder runs int8, own head, 1×1 compression); the
/// transmitted map is then the K-channel message and the mask the cells the own head marks
/// (`threshold` is then the heatmap probability, σ > threshold, dilated 3×3).
///
/// Width, bit depth and threshold are plain fields: changing them reloads nothing and
/// allocates nothing (every table is built at `init`). Not thread-safe.
public final class EdgeEncoder: @unchecked Sendable {
    public let modelID: String
    public let model: SlimmableModel
    public let featurizer: BEVFeaturizer
    public let encoder: SlimmableEncoder
    public let quantization: [QuantKey: FeatureQuantization]
    /// The model's rate–accuracy table (nil when the file has none), for `WidthController`.
    public let rateAccuracy: [RateAccuracyEntry]?
    /// The deep-fusion agent stage, when the model is a deep-fusion model.
    public let deep: DeepAgentStage?
    /// Residual codebooks per width index (`features.{width}.codebook`), for codebook frames.
    public let codebooks: [Int: FeatureCodebook]
    /// Send codebook indices (PROTOCOL.md §4.2, quant_mode 2) instead of scalar codes; needs a
    /// codebook at the current width (a deep-fusion model's). `bits` then does not apply.
    public var codebook = false
    /// Scratch of one residual.
    private var residual: [Float]
    /// The encoder's dequantized output, the deep stage's input.
    private let deepInput: FloatTensor?
    /// Requantization tables from the int8 encoder's output code to each transmitted quantization's
    /// (one lookup per value; hashing the key is once per frame).
    private let tables: [QuantKey: [UInt8]]
    private let bev: FloatTensor
    /// Channel-major codes of the last frame (C × H × W at the current width).
    public private(set) var dense: [UInt8]
    /// Cell mask of the last frame (bit i = cell i sent), when `threshold` > 0.
    public private(set) var mask: [UInt8]
    public var widthIndex: Int { didSet { encoder.widthIndex = widthIndex } }
    public var bits: Int
    /// Cells whose feature vector has an L2 norm at or below this are not sent (0: send all).
    public var threshold: Float = 0
    /// Run the encoder in float instead of int8 (what training/evaluate.py does; for comparing
    /// with it — agents use int8).
    public var floatEncoder = false
    /// Seconds of the last `encode`: featurize, encoder, quantize (+ mask).
    public private(set) var lastStageSeconds: (featurize: Double, encode: Double, quantize: Double) = (0, 0, 0)

    public init(modelFile path: String, grid: BEVGrid = BEVGrid()) throws {
        let st = try Safetensors(contentsOf: path)
        model = try SlimmableModel(st)
        modelID = model.architecture.name
        featurizer = BEVFeaturizer(grid: grid)
        encoder = SlimmableEncoder(model: model, inputHeight: grid.height, inputWidth: grid.width)
        quantization = try FeatureQuantization.all(in: st)
        rateAccuracy = try RateAccuracyEntry.table(in: st, quantization: quantization)
        var t: [QuantKey: [UInt8]] = [:]
        for (key, q) in quantization {
            guard key.widthIndex < model.architecture.widths.count,
                let out = model.int8?[key.widthIndex][encoder.outputLayer].output
            else { continue }
            t[key] = q.table(from: out)
        }
        tables = t
        codebooks = try FeatureCodebook.all(in: st)
        residual = [Float](repeating: 0, count: codebooks.values.map(\.dim).max() ?? 0)
        if let spec = try DeepArchitecture(st) {
            deep = try DeepAgentStage(st, spec: spec)
            deepInput = FloatTensor(height: spec.height, width: spec.width, channels: spec.inputChannels)
        } else {
            deep = nil
            deepInput = nil
        }
        bev = FloatTensor(height: grid.height, width: grid.width, channels: BEVGrid.channels)
        let maxOut = model.architecture.layers.last!.outChannels
        dense = []
        mask = []
        widthIndex = model.architecture.widths.count - 1
        bits = 8
        let (oh, ow) = (encoder.plans[encoder.outputLayer].outHeight, encoder.plans[encoder.outputLayer].outWidth)
        let maxLevels = codebooks.values.map(\.levels).max() ?? 0
        dense = [UInt8](repeating: 0, count: max(maxOut, deep?.spec.messageChannels ?? 0, maxLevels) * oh * ow)
        mask = [UInt8](repeating: 0, count: CellMask.byteCount(cells: oh * ow))
    }

    private func encodeFloat() -> (channels: Int, height: Int, width: Int, masked: Bool) {
        let out = encoder.runFloat(bev)
        if let deep { return encodeDeep(deep, out) }
        let c = out.channels
        let h = out.height
        let w = out.width
        let cells = h * w
        guard let q = quantization[QuantKey(widthIndex: widthIndex, bits: bits)] else {
            preconditionFailure("no feature quantization for width \(widthIndex), \(bits) bits in \(model.file)")
        }
        let qmax = Float((1 << bits) - 1)
        let masked = threshold > 0
        if masked { for i in 0..<mask.count { mask[i] = 0 } }
        let background = encoder.plans[encoder.outputLayer].floatBackground[widthIndex]
        for cell in 0..<cells {
            let src = out.pointer + cell * c
            if masked {
                var n: Float = 0
                for ch in 0..<c {
                    let d = src[ch] - background[ch]
                    n += d * d
                }
                if n > threshold * threshold { CellMask.insert(cell, into: &mask) }
            }
            for ch in 0..<c {
                dense[ch * cells + cell] = UInt8(
                    min(max((src[ch] / q.scale[ch] + q.zeroPoint[ch]).rounded(.toNearestOrEven), 0), qmax))
            }
        }
        return (c, h, w, masked)
    }

    /// The deep stage on the encoder's float map (nil: it already ran), its message quantized into
    /// `dense` and its selection into `mask`.
    private func encodeDeep(_ deep: DeepAgentStage, _ f: FloatTensor?) -> (
        channels: Int, height: Int, width: Int, masked: Bool
    ) {
        precondition(
            widthIndex == model.architecture.widths.count - 1, "a deep-fusion model's agent runs at full width")
        if let f { deep.run(f, threshold: threshold) }
        let m = deep.message
        let (c, h, w) = (m.channels, m.height, m.width)
        let cells = h * w
        let masked = threshold > 0
        if masked { for i in 0..<mask.count { mask[i] = 0 } }
        if codebook {
            guard let book = codebooks[widthIndex], book.dim == c else {
                preconditionFailure("no codebook for width \(widthIndex) in \(model.file)")
            }
            residual.withUnsafeMutableBufferPointer { r in
                dense.withUnsafeMutableBufferPointer { d in
                    withUnsafeTemporaryAllocation(of: UInt8.self, capacity: book.levels) { idx in
                        for cell in 0..<cells {
                            let on = !masked || deep.sent[cell] != 0
                            if masked, on { CellMask.insert(cell, into: &mask) }
                            if on {
                                book.encode(m.pointer + cell * c, into: idx.baseAddress!, residual: r.baseAddress!)
                            }
                            for l in 0..<book.levels { d[l * cells + cell] = on ? idx[l] : 0 }
                        }
                    }
                }
            }
            return (book.levels, h, w, masked)
        }
        guard let q = quantization[QuantKey(widthIndex: widthIndex, bits: bits)] else {
            preconditionFailure("no message quantization at \(bits) bits in \(model.file)")
        }
        let qmax = Float((1 << bits) - 1)
        for cell in 0..<cells {
            if masked, deep.sent[cell] != 0 { CellMask.insert(cell, into: &mask) }
            let src = m.pointer + cell * c
            for ch in 0..<c {
                dense[ch * cells + cell] = UInt8(
                    min(max((src[ch] / q.scale[ch] + q.zeroPoint[ch]).rounded(.toNearestOrEven), 0), qmax))
            }
        }
        return (c, h, w, masked)
    }

    /// An operating point the model has no parameters for (`setOperatingPoint`).
    public struct OperatingPointError: Error, CustomStringConvertible {
        public let description: String
    }

    /// What to send when nobody chose, for a model: a deep-fusion model's cells at heatmap
    /// probability 0.2 as residual-codebook indices (2-bit codes when it has no codebook or scalar
    /// codes are asked for), a map model's full-width 4-bit map. `demo` and `bench e2e` fill what
    /// no option names from it.
    public static func recommendedOperatingPoint(modelFile path: String) throws -> (
        bits: Int, threshold: Float, codebook: Bool
    ) {
        let st = try Safetensors(contentsOf: path)
        guard let spec = try DeepArchitecture(st) else { return (4, 0, false) }
        // A deep-fusion model's codebook is its message's (full width only).
        return (2, 0.2, try FeatureCodebook.all(in: st).values.contains { $0.dim == spec.messageChannels })
    }

    /// Sets width, bit depth, threshold and payload together, after checking that the model has
    /// what they need: a feature quantization at (width, bits) for scalar frames, a codebook at the
    /// width for codebook frames (`bits` then does not apply), full width for a deep-fusion model,
    /// a finite threshold ≥ 0. Nothing changes when it throws. Settings read from outside (a
    /// config, a command line) go through here; the fields alone are for values known to be valid
    /// (the model's own rate–accuracy rows).
    public func setOperatingPoint(widthIndex wi: Int, bits b: Int, threshold t: Float, codebook cb: Bool)
        throws(OperatingPointError)
    {
        let widths = model.architecture.widths
        func fail(_ s: String) -> OperatingPointError { OperatingPointError(description: "\(model.file): \(s)") }
        guard widths.indices.contains(wi) else {
            throw fail("no width index \(wi) (it has \(widths.count) widths, 0…\(widths.count - 1))")
        }
        if deep != nil, wi != widths.count - 1 {
            throw fail("a deep-fusion model's agent runs at full width (index \(widths.count - 1)), not \(wi)")
        }
        guard t.isFinite, t >= 0 else { throw fail("threshold \(t) is not a number ≥ 0") }
        if cb {
            guard codebooks[wi] != nil else {
                throw fail("no residual codebook at width index \(wi): codebook frames need a deep-fusion model's")
            }
        } else if quantization[QuantKey(widthIndex: wi, bits: b)] == nil {
            let have = quantization.keys.filter { $0.widthIndex == wi }.map(\.bits).sorted(by: >)
            throw fail(
                "no \(b)-bit feature quantization at width index \(wi) (it has \(have.map(String.init).joined(separator: ", ")) bits)"
            )
        }
        (widthIndex, bits, threshold, codebook) = (wi, b, t, cb)
    }

    /// The last frame's features as the server dequantizes them (H × W × C, NHWC), for
    /// evaluating the pipeline offline; cells outside the mask are 0. With a deep-fusion model,
    /// C + 1 channels: the last is 1 where the cell was sent (`DeepFusionDetector`'s input).
    public func dequantized(into t: FloatTensor, channels c: Int, height h: Int, width w: Int, masked: Bool) {
        if codebook, let book = codebooks[widthIndex] {
            t.reshape(height: h, width: w, channels: book.dim + 1)
            let cells = h * w
            for cell in 0..<cells {
                let on = !masked || CellMask.contains(mask, cell)
                let v = t.pointer + cell * (book.dim + 1)
                for k in 0..<book.dim { v[k] = 0 }
                if on { for l in 0..<book.levels { book.add(level: l, index: Int(dense[l * cells + cell]), to: v) } }
                v[book.dim] = on ? 1 : 0
            }
            return
        }
        let q = quantization[QuantKey(widthIndex: widthIndex, bits: bits)]!
        let stride = deep == nil ? c : c + 1
        t.reshape(height: h, width: w, channels: stride)
        let cells = h * w
        for cell in 0..<cells {
            let on = !masked || CellMask.contains(mask, cell)
            for ch in 0..<c {
                t.storage[cell * stride + ch] = on ? q.dequantize(dense[ch * cells + cell], channel: ch) : 0
            }
            if stride > c { t.storage[cell * stride + c] = on ? 1 : 0 }
        }
    }

    /// How the last frame's values are to be read (the FeatureFrame's `quant_mode`) and their bit
    /// depth: the model's scalar quantization at `bits`, or codebook indices.
    public var frameQuantization: (quant: FrameQuantization, bits: UInt8) {
        if codebook, let book = codebooks[widthIndex] { return (.codebook, UInt8(book.bits)) }
        return (.model, UInt8(bits))
    }

    /// Bit depths the model has parameters for at every width, as a Hello `bits_mask`.
    public var bitsMask: UInt8 {
        var m: UInt8 = 0
        // A deep-fusion model sends at full width only.
        let widths = deep == nil ? Array(model.architecture.widths.indices) : [model.architecture.widths.count - 1]
        for b in 1...8 where widths.allSatisfy({ quantization[QuantKey(widthIndex: $0, bits: b)] != nil }) {
            m |= 1 << (b - 1)
        }
        // Codebook frames carry indices of the codebook's bits.
        for book in codebooks.values { m |= 1 << (book.bits - 1) }
        return m
    }

    /// Runs the pipeline on one sweep. `dense` (and `mask` when masked) hold the result.
    /// - Returns: the feature map's shape and whether a mask applies.
    public func encode(_ points: UnsafeBufferPointer<SIMD4<Float>>, sensorHeight: Float) -> (
        channels: Int, height: Int, width: Int, masked: Bool
    ) {
        let t0 = SystemClock.monotonicNs()
        featurizer.featurize(points, sensorHeight: sensorHeight, into: bev)
        let t1 = SystemClock.monotonicNs()
        if floatEncoder {
            let r = encodeFloat()
            lastStageSeconds = (Double(t1 - t0) / 1e9, Double(SystemClock.monotonicNs() - t1) / 1e9, 0)
            return r
        }
        let out = encoder.runInt8(bev)
        let t2 = SystemClock.monotonicNs()
        defer {
            lastStageSeconds = (
                Double(t1 - t0) / 1e9, Double(t2 - t1) / 1e9, Double(SystemClock.monotonicNs() - t2) / 1e9
            )
        }
        if let deep, deep.hasInt8, deep.inputQuant == encoder.outputQuant {
            // The int8 backbone reads the encoder's codes as they are.
            deep.run(quantized: out, threshold: threshold)
            return encodeDeep(deep, nil)
        }
        if let deep, let f = deepInput, let q = encoder.outputQuant {
            q.dequantize(out, into: f)
            return encodeDeep(deep, f)
        }
        let c = out.channels
        let h = out.height
        let w = out.width
        let cells = h * w
        guard (1...8).contains(bits), let table = tables[QuantKey(widthIndex: widthIndex, bits: bits)],
            let q = encoder.outputQuant
        else {
            preconditionFailure("no feature quantization for width \(widthIndex), \(bits) bits in \(model.file)")
        }
        let masked = threshold > 0
        let background = encoder.plans[encoder.outputLayer].qBackground[widthIndex]
        if masked { for i in 0..<mask.count { mask[i] = 0 } }
        let thresholdSquared = threshold * threshold
        dense.withUnsafeMutableBufferPointer { d in
            table.withUnsafeBufferPointer { tb in
                for cell in 0..<cells {
                    let src = out.pointer + cell * c
                    if masked {
                        // Distance from what an empty BEV produces (training/evaluate.py's rule).
                        var n: Float = 0
                        for ch in 0..<c {
                            let x = q.scale * Float(Int32(src[ch]) - Int32(background[ch]))
                            n += x * x
                        }
                        if n > thresholdSquared { CellMask.insert(cell, into: &mask) }
                    }
                    for ch in 0..<c { d[ch * cells + cell] = tb[ch * 256 + Int(src[ch])] }
                }
            }
        }
        return (c, h, w, masked)
    }
}
