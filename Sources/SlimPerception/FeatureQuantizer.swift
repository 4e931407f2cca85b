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
