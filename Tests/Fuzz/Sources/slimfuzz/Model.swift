import Foundation
import SlimEngine
import SlimPerception

// The safetensors reader and the architecture validation behind it (edge encoder, server
// detector, deep-fusion stages, codebooks, rate–accuracy table). Invariants: every tensor the reader accepts lies inside the
// file with exactly the bytes its dtype and shape need; an accepted file written again by
// SlimSplit's writer reads back the same tensors and metadata; model loading ends in a model
// or a ModelFileError.

func fuzzSafetensors(_ input: UnsafeRawBufferPointer) {
    guard let st = try? Safetensors(bytes: Array(input), file: "fuzz.safetensors") else { return }
    var w = SafetensorsWriter()
    w.metadata = st.metadata
    for (name, t) in st.tensors.sorted(by: { $0.key < $1.key }) {
        invariant(
            t.range.lowerBound >= st.dataStart && t.range.upperBound <= st.bytes.count,
            "tensor \(name) lies outside the data section")
        invariant(t.range.count == t.elementCount * t.dtype.size, "tensor \(name) has the wrong byte count")
        w.add(name, t.dtype, shape: t.shape, bytes: Array(st.bytes[t.range]))
    }
    guard let back = try? Safetensors(bytes: w.serialized(), file: "again.safetensors") else {
        fatalError("an accepted file, written again, is refused")
    }
    invariant(back.metadata == st.metadata && back.tensors.count == st.tensors.count, "metadata or tensor list changed")
    for (name, t) in st.tensors {
        guard let u = back.tensors[name] else { fatalError("tensor \(name) lost") }
        invariant(
            u.dtype == t.dtype && u.shape == t.shape && back.bytes[u.range].elementsEqual(st.bytes[t.range]),
            "tensor \(name) changed")
    }
    if let model = try? SlimmableModel(st) {
        invariant(model.float.count == model.architecture.widths.count, "a model without a layer set per width")
    }
    _ = try? CooperativeDetector(st, maxAgents: 2)
    if let spec = try? DeepArchitecture(st) {
        _ = try? DeepFusionDetector(st, spec: spec, maxAgents: 2)
        _ = try? DeepAgentStage(st, spec: spec)
    }
    _ = try? FeatureCodebook.all(in: st)
}

// The rate–accuracy table (model metadata `rate_accuracy`, JSON) against a model that serves
// widths 0–2 at 4 and 8 bits. Invariant: every accepted entry is servable and in range, and the
// table written back as JSON reads as the same table.
private let quantization: [QuantKey: FeatureQuantization] = {
    var q: [QuantKey: FeatureQuantization] = [:]
    for w in 0..<3 {
        for b in [4, 8] {
            q[QuantKey(widthIndex: w, bits: b)] = FeatureQuantization(scale: [1], zeroPoint: [0], bits: b)
        }
    }
    return q
}()

func fuzzRateTable(_ input: UnsafeRawBufferPointer) {
    guard let table = tableOf(String(decoding: input, as: UTF8.self)) else { return }
    for e in table {
        invariant(
            quantization[QuantKey(widthIndex: e.widthIndex, bits: e.bits)] != nil && e.bytes > 0
                && e.bytes <= Double(1 << 30)
                && (0...100).contains(e.ap50) && (0...1e6).contains(e.threshold), "an invalid entry was accepted: \(e)")
    }
    let entries: [[String: Any]] = table.map {
        [
            "width_index": $0.widthIndex, "bits": $0.bits, "threshold": Double($0.threshold), "bytes": $0.bytes,
            "ap50": $0.ap50,
        ]
    }
    guard let json = try? JSONSerialization.data(withJSONObject: ["entries": entries]) else {
        fatalError("table not serializable")
    }
    invariant(tableOf(String(decoding: json, as: UTF8.self)) == table, "the table does not survive JSON")
}

private func tableOf(_ text: String) -> [RateAccuracyEntry]? {
    try? RateAccuracyEntry.table(json: text, file: "fuzz.safetensors", quantization: quantization)
}
