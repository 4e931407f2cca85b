import Foundation
import SlimEngine

/// Which of the model's transmitted-feature quantizations: a width index and a bit depth (the
/// `features.{width}.{bits}.*` tensors of the model file).
public struct QuantKey: Hashable, Sendable, CustomStringConvertible {
    public var widthIndex: Int
    public var bits: Int
    public init(widthIndex: Int, bits: Int) {
        self.widthIndex = widthIndex
        self.bits = bits
    }
    public var description: String { "\(widthIndex).\(bits)" }
}

/// The transmitted features' per-channel affine quantization (`features.{width}.{bits}.scale`
/// and `.zero_point` in the model file): q = clamp(round(x / scale[c] + zp[c]), 0, 2^bits − 1),
/// x ≈ (q − zp[c]) · scale[c]. The agent quantizes its int8 encoder output with it; the server
/// dequantizes with the same tensors, so frames carry no parameters (`quant_mode` 1).
public struct FeatureQuantization: Sendable {
    public let scale: [Float]
    public let zeroPoint: [Float]
    public let bits: Int
    /// The value of a cell a sparse frame leaves out (`features.{width}.{bits}.empty`: the
    /// encoder's output for an empty BEV, requantized), or nil when the model file has none
    /// (such cells are then 0).
    public let empty: [Float]?

    public init(scale: [Float], zeroPoint: [Float], bits: Int, empty: [Float]? = nil) {
        self.scale = scale
        self.zeroPoint = zeroPoint
        self.bits = bits
        self.empty = empty
    }

    /// Every (width, bits) pair the model file carries.
    public static func all(in st: Safetensors) throws(ModelFileError) -> [QuantKey: FeatureQuantization] {
        var out: [QuantKey: FeatureQuantization] = [:]
        for name in st.tensors.keys where name.hasPrefix("features.") && name.hasSuffix(".scale") {
            let parts = name.split(separator: ".")
            guard parts.count == 4, let wi = Int(parts[1]), let bits = Int(parts[2]), (1...8).contains(bits) else {
                continue
            }
            let s = try st.floats(name)
            let z = try st.floats("features.\(wi).\(bits).zero_point", shape: [s.count])
            guard s.allSatisfy({ $0 > 0 && $0.isFinite }),
                z.allSatisfy({ $0 >= 0 && $0 <= Float((1 << bits) - 1) && $0 == $0.rounded() })
            else {
                throw ModelFileError(
                    kind: .tensor, file: st.file, subject: name,
                    problem: "scales must be > 0 and zero points whole numbers in 0...\((1 << bits) - 1)")
            }
            let e =
                st.tensors["features.\(wi).\(bits).empty"] == nil
                ? nil : try st.floats("features.\(wi).\(bits).empty", shape: [s.count])
            if let e, !e.allSatisfy(\.isFinite) {
                throw ModelFileError(
                    kind: .tensor, file: st.file, subject: "features.\(wi).\(bits).empty",
                    problem: "values must be finite")
            }
            out[QuantKey(widthIndex: wi, bits: bits)] = FeatureQuantization(
                scale: s, zeroPoint: z, bits: bits, empty: e)
        }
        return out
    }

    /// A table from the encoder's uint8 output code to this quantization's code, per channel
    /// ([channel][256]), so that requantizing a frame is one lookup per value.
    public func table(from q: QuantParams) -> [UInt8] {
        let qmax = Float((1 << bits) - 1)
        var t = [UInt8](repeating: 0, count: scale.count * 256)
        for c in 0..<scale.count {
            for v in 0..<256 {
                let x = q.scale * Float(v - Int(q.zeroPoint))
                t[c * 256 + v] = UInt8(min(max((x / scale[c] + zeroPoint[c]).rounded(.toNearestOrEven), 0), qmax))
            }
        }
        return t
    }

    @inline(__always)
    public func dequantize(_ code: UInt8, channel c: Int) -> Float { (Float(code) - zeroPoint[c]) * scale[c] }
}

/// Residual codebooks for a width's transmitted vectors (`features.{width}.codebook`, F32
/// [levels, size, dim]; training/train_codebook.py): a sent cell is `levels` indices of
/// log2(size) bits, each the nearest codeword (squared L2, ties to the lowest index) to what the
/// levels before it left; its vector is the sum of its levels' codewords (PROTOCOL.md §4.2,
/// quant_mode 2). The agent encodes with it, the server decodes.
public struct FeatureCodebook: Sendable {
    public let levels: Int, size: Int, dim: Int
    /// Bits per index: log2(size).
    public let bits: Int
    /// [levels][size][dim].
    public let words: [Float]

    public init(levels: Int, size: Int, dim: Int, words: [Float]) {
        precondition(words.count == levels * size * dim && size.nonzeroBitCount == 1)
        self.levels = levels
        self.size = size
        self.dim = dim
        self.words = words
        bits = size.trailingZeroBitCount
    }

    /// Every width's codebooks in the model file, checked (shape, a power-of-two size from 2 to
    /// 256, 1 to 8 levels, finite values).
    public static func all(in st: Safetensors) throws(ModelFileError) -> [Int: FeatureCodebook] {
        var out: [Int: FeatureCodebook] = [:]
        for name in st.tensors.keys where name.hasPrefix("features.") && name.hasSuffix(".codebook") {
            let parts = name.split(separator: ".")
            guard parts.count == 3, let wi = Int(parts[1]), let t = st.tensors[name] else { continue }
            let s = t.shape
            guard s.count == 3, (1...8).contains(s[0]), (2...256).contains(s[1]), s[1].nonzeroBitCount == 1,
                (1...1024).contains(s[2])
            else {
                throw ModelFileError(
                    kind: .tensor, file: st.file, subject: name,
                    problem: "shape \(s): expected [levels 1...8, size a power of two in 2...256, dim 1...1024]")
            }
            let w = try st.floats(name, shape: s)
            guard w.allSatisfy(\.isFinite) else {
                throw ModelFileError(kind: .tensor, file: st.file, subject: name, problem: "values must be finite")
            }
            out[wi] = FeatureCodebook(levels: s[0], size: s[1], dim: s[2], words: w)
        }
        return out
    }

    /// The indices of the vector `x` (dim floats) into `q` (levels values), using `residual`
    /// (dim floats of scratch).
    public func encode(_ x: UnsafePointer<Float>, into q: UnsafeMutablePointer<UInt8>, residual: UnsafeMutablePointer<Float>) {
        residual.update(from: x, count: dim)
        words.withUnsafeBufferPointer { w in
            for l in 0..<levels {
                var best = 0
                var bestD = Float.infinity
                for i in 0..<size {
                    let c = w.baseAddress! + (l * size + i) * dim
                    var d: Float = 0
                    for k in 0..<dim {
                        let e = residual[k] - c[k]
                        d += e * e
                    }
                    if d < bestD {
                        bestD = d
                        best = i
                    }
                }
                q[l] = UInt8(best)
                let c = w.baseAddress! + (l * size + best) * dim
                for k in 0..<dim { residual[k] -= c[k] }
            }
        }
    }

    /// Adds level `level`'s codeword `index` to `x` (dim floats). `index` < size (the frame's bit
    /// depth equals `bits`, checked before).
    @inline(__always)
    public func add(level: Int, index: Int, to x: UnsafeMutablePointer<Float>) {
        words.withUnsafeBufferPointer { w in
            let c = w.baseAddress! + (level * size + index) * dim
            for k in 0..<dim { x[k] += c[k] }
        }
    }
}
