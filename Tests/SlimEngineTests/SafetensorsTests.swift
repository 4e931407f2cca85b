import Foundation
import Testing

@testable import SlimEngine

/// Builds a safetensors file from a raw header JSON text and data bytes.
func rawSafetensors(_ header: String, data: [UInt8], declaredLength: UInt64? = nil) -> [UInt8] {
    let h = Array(header.utf8)
    var n = declaredLength ?? UInt64(h.count)
    var out: [UInt8] = []
    for _ in 0..<8 {
        out.append(UInt8(n & 0xFF))
        n >>= 8
    }
    return out + h + data
}

func modelError(_ bytes: [UInt8]) -> ModelFileError? {
    do {
        _ = try Safetensors(bytes: bytes, file: "bad.safetensors")
        return nil
    } catch { return error }
}

@Suite("safetensors: hostile and broken files fail with an error naming the tensor")
struct SafetensorsTests {
    @Test func roundTrip() throws {
        var w = SafetensorsWriter()
        w.metadata = ["format": "test"]
        w.add("a", .f32, shape: [2, 3], [Float](repeating: 1.5, count: 6))
        w.add("b", .i8, shape: [4], [Int8](arrayLiteral: -1, 2, -3, 4))
        let st = try Safetensors(bytes: w.serialized())
        #expect(st.metadata["format"] == "test")
        #expect(try st.floats("a", shape: [2, 3]) == [Float](repeating: 1.5, count: 6))
        #expect(try st.array("b", as: .i8, Int8.self) == [-1, 2, -3, 4])
        // Wrong dtype or shape on access is an error too.
        #expect(throws: ModelFileError.self) { try st.floats("b") }
        #expect(throws: ModelFileError.self) { try st.floats("a", shape: [3, 2]) }
        #expect(throws: ModelFileError.self) { try st.floats("missing") }
    }

    @Test func truncated() throws {
        var w = SafetensorsWriter()
        w.add("weights", .f32, shape: [16], [Float](repeating: 0, count: 16))
        let full = w.serialized()
        let e = modelError(Array(full.dropLast(10)))
        #expect(e?.subject == "weights" || e?.problem.contains("outside") == true)
        #expect(modelError(Array(full.prefix(5)))?.problem.contains("shorter") == true)
        #expect(modelError(Array(full.prefix(20)))?.problem.contains("past the end") == true)
    }

    @Test func overlappingOffsets() {
        let e = modelError(
            rawSafetensors(
                #"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
                data: [UInt8](repeating: 0, count: 6)))
        #expect(e?.subject == "b")
        #expect(e?.problem.contains("overlaps") == true)
    }

    @Test func holeAndTrailingBytes() {
        let hole = modelError(
            rawSafetensors(#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[2,4]}}"#, data: [0, 0, 0, 0]))
        #expect(hole?.problem.contains("hole") == true)
        let trailing = modelError(
            rawSafetensors(#"{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]}}"#, data: [0, 0, 0, 0]))
        #expect(trailing?.problem.contains("belong to none") == true)
    }

    @Test func wrongDtypeSize() {
        let e = modelError(
            rawSafetensors(
                #"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, data: [UInt8](repeating: 0, count: 8)))
        #expect(e?.subject == "w")
        #expect(e?.problem.contains("needs 12 bytes") == true)
    }

    @Test func unknownDtype() {
        let e = modelError(rawSafetensors(#"{"w":{"dtype":"F7","shape":[1],"data_offsets":[0,1]}}"#, data: [0]))
        #expect(e?.subject == "w")
        #expect(e?.problem.contains("unknown dtype") == true)
    }

    @Test func absurdShapes() {
        let huge = modelError(
            rawSafetensors(
                #"{"w":{"dtype":"F32","shape":[100000,100000,100000],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]))
        #expect(huge?.subject == "w")
        #expect(huge?.problem.contains("too many elements") == true)
        let negative = modelError(
            rawSafetensors(#"{"w":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]))
        #expect(negative?.problem.contains("non-negative") == true)
        let fractional = modelError(
            rawSafetensors(#"{"w":{"dtype":"F32","shape":[1.5],"data_offsets":[0,4]}}"#, data: [0, 0, 0, 0]))
        #expect(fractional?.subject == "w")
        let rank = modelError(
            rawSafetensors(#"{"w":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}"#, data: [0]))
        #expect(rank?.problem.contains("at most 8") == true)
    }

    @Test func hugeHeader() {
        let e = modelError(rawSafetensors("{}", data: [], declaredLength: 1 << 40))
        #expect(e?.problem.contains("exceeds") == true)
    }

    @Test func notJSON() {
        #expect(modelError(rawSafetensors("{not json", data: []))?.problem.contains("not valid JSON") == true)
        #expect(modelError(rawSafetensors("[1,2]", data: []))?.problem.contains("not a JSON object") == true)
        #expect(modelError(rawSafetensors(#"{"__metadata__":{"k":1}}"#, data: []))?.subject == "__metadata__.k")
        #expect(
            modelError(rawSafetensors(#"{"w":{"dtype":"U8","shape":[1],"data_offsets":[1]}}"#, data: [0]))?.subject
                == "w")
    }

    @Test("a model file whose architecture disagrees with its tensors names the tensor")
    func inconsistentModel() {
        var w = SafetensorsWriter()
        w.metadata = [
            "format": "slimsplit-model", "format_version": "1",
            "architecture": """
            {"name":"t","version":"1","input":{"name":"input","channels":2,"height":8,"width":8},"widths":[0.5,1.0],
             "layers":[{"name":"c1","type":"conv2d","input":"input","in_channels":2,"out_channels":4,"kernel":[3,3],
             "stride":[1,1],"padding":[1,1],"dilation":[1,1],"groups":1,"bias":true,"batch_norm":null,"activation":"relu",
             "slim_in":false,"slim_out":true}],"output":"c1"}
            """,
        ]
        w.add("c1.weight", .f32, shape: [4, 2, 3, 1], [Float](repeating: 0, count: 24))  // wrong shape
        w.add("c1.bias", .f32, shape: [4], [Float](repeating: 0, count: 4))
        do {
            _ = try SlimmableModel(Safetensors(bytes: w.serialized(), file: "m.safetensors"))
            Issue.record("accepted")
        } catch {
            #expect(error.subject == "c1.weight")
            #expect(error.problem.contains("shape"))
        }
        var bad = SafetensorsWriter()
        bad.metadata = [
            "format": "slimsplit-model", "format_version": "1",
            "architecture":
                #"{"name":"t","version":"1","input":{"name":"input","channels":2,"height":8,"width":8},"widths":[1.0],"layers":[{"name":"c1","type":"lstm","input":"input","in_channels":2,"out_channels":4,"kernel":[3,3],"stride":[1,1],"padding":[1,1],"dilation":[1,1],"groups":1,"bias":true,"activation":null,"slim_in":false,"slim_out":true}],"output":"c1"}"#,
        ]
        do {
            _ = try SlimmableModel(Safetensors(bytes: bad.serialized(), file: "m.safetensors"))
            Issue.record("accepted")
        } catch {
            #expect(error.subject == "layer c1")
            #expect(error.problem.contains("unknown type"))
        }
    }
}
