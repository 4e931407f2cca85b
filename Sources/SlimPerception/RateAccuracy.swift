import Foundation
import SlimEngine

/// One configuration of the model's measured rate–accuracy table.
public struct RateAccuracyEntry: Sendable, Equatable {
    public var widthIndex: Int
    public var bits: Int
    /// Sparsity threshold (0: every cell sent).
    public var threshold: Float
    /// Mean bytes of one transmitted map (bit-packed + LZ4) on the test scenes.
    public var bytes: Double
    /// AP@0.5 (%) of intermediate fusion at this configuration on the test scenes.
    public var ap50: Double
    /// Codebook indices (the width's residual codebooks; `bits` is then their index bits) instead
    /// of scalar codes (table entries with `"payload": "codebook"`).
    public var codebook: Bool

    public init(widthIndex: Int, bits: Int, threshold: Float = 0, bytes: Double, ap50: Double, codebook: Bool = false) {
        self.widthIndex = widthIndex
        self.bits = bits
        self.threshold = threshold
        self.bytes = bytes
        self.ap50 = ap50
        self.codebook = codebook
    }

    /// The table in a model file: metadata `rate_accuracy`, written by
    /// `training/evaluate.py --write-table` (docs/model-format.md). Entries the file cannot serve
    /// (no feature quantization for that width and depth) are refused.
    /// - Returns: nil when the file has no table.
    public static func table(in st: Safetensors, quantization: [QuantKey: FeatureQuantization]) throws(ModelFileError)
        -> [Self]?
    {
        guard let text = st.metadata["rate_accuracy"] else { return nil }
        return try table(json: text, file: st.file, quantization: quantization, codebooks: FeatureCodebook.all(in: st))
    }

    /// The table from its JSON text (the value of metadata `rate_accuracy` in `file`).
    public static func table(
        json text: String, file: String, quantization: [QuantKey: FeatureQuantization],
        codebooks: [Int: FeatureCodebook] = [:]
    ) throws(ModelFileError) -> [Self] {
        func fail(_ problem: String) -> ModelFileError {
            ModelFileError(kind: .header, file: file, subject: "__metadata__.rate_accuracy", problem: problem)
        }
        // JSONDecoder, not JSONSerialization: on Linux the latter reads a number with many digits
        // as an NSDecimalNumber whose double is not the nearest one, so a table would not read
        // back as itself once written (found by the rate-table fuzz target).
        struct Entry: Decodable {
            var width_index: Int?
            var bits: Int?
            var threshold: Double?
            var bytes: Double?
            var ap50: Double?
            var payload: String?
        }
        struct Document: Decodable { var entries: [Entry]? }
        guard let doc = try? JSONDecoder().decode(Document.self, from: Data(text.utf8)),
            let entries = doc.entries, !entries.isEmpty
        else {
            throw fail("not a JSON object with a non-empty 'entries' list")
        }
        var out: [Self] = []
        for (i, e) in entries.enumerated() {
            guard let wi = e.width_index, let bits = e.bits, let bytes = e.bytes, let ap = e.ap50 else {
                throw fail("entries[\(i)]: needs width_index, bits, bytes and ap50")
            }
            let threshold = e.threshold ?? 0
            let codebook = e.payload == "codebook"
            guard e.payload == nil || codebook || e.payload == "scalar" else {
                throw fail("entries[\(i)]: payload must be scalar or codebook")
            }
            if codebook {
                guard codebooks[wi]?.bits == bits else {
                    throw fail("entries[\(i)]: no codebook of \(bits)-bit indices for width index \(wi)")
                }
            } else if quantization[QuantKey(widthIndex: wi, bits: bits)] == nil {
                throw fail("entries[\(i)]: no feature quantization for width index \(wi) at \(bits) bits")
            }
            // Ranges a real table lies in: a map is at most a message (1 GiB is the largest limit),
            // AP is a percentage, a threshold is a feature magnitude.
            guard bytes > 0, bytes <= Double(1 << 30), (0...100).contains(ap), (0...1e6).contains(threshold) else {
                throw fail("entries[\(i)]: bytes must be in (0, 2^30], ap50 in 0...100, threshold in 0...1e6")
            }
            out.append(
                Self(widthIndex: wi, bits: bits, threshold: Float(threshold), bytes: bytes, ap50: ap, codebook: codebook))
        }
        return out
    }
}
