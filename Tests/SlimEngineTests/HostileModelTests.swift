import SlimPerception
import Foundation
import Testing

@testable import SlimEngine

/// A model file is input from outside (downloaded, copied between machines): a malformed server
/// architecture gets a `ModelFileError` that names the key, never a crash or a huge allocation.
@Suite("Hostile model files: typed errors, not crashes")
struct HostileModelTests {
    static let shipped = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
        .appendingPathComponent("Models/slimsplit-bev.safetensors").path

    /// The shipped architecture with `edit` applied to its `server` object, in a file with no tensors.
    static func file(_ edit: (inout [String: Any]) -> Void) throws -> Safetensors {
        let st = try Safetensors(contentsOf: shipped)
        var arch = try #require(
            try JSONSerialization.jsonObject(with: Data(st.metadata["architecture"]!.utf8)) as? [String: Any])
        var server = try #require(arch["server"] as? [String: Any])
        edit(&server)
        arch["server"] = server
        var w = SafetensorsWriter()
        w.metadata = st.metadata
        w.metadata["architecture"] = String(decoding: try JSONSerialization.data(withJSONObject: arch), as: UTF8.self)
        return try Safetensors(bytes: w.serialized(), file: "hostile.safetensors")
    }

    static func editLayer(_ server: inout [String: Any], _ key: String, _ value: Any?) {
        var layers = server["layers"] as! [[String: Any]]
        let i = layers.firstIndex { $0["type"] as? String == "conv2d" }!
        layers[i][key] = value
        server["layers"] = layers
    }

    struct Case: Sendable, CustomStringConvertible {
        var description: String
        var subject: String
        var edit: @Sendable (inout [String: Any]) -> Void
    }

    static let cases: [Case] = [
        Case(description: "in_channels as a string", subject: "in_channels") { editLayer(&$0, "in_channels", "64") },
        Case(description: "a one-element kernel", subject: "kernel") { editLayer(&$0, "kernel", [3]) },
        Case(description: "a layer without a name", subject: "name") { editLayer(&$0, "name", nil) },
        Case(description: "a negative padding", subject: "padding") { editLayer(&$0, "padding", [-1, 1]) },
        Case(description: "an absurd out_channels", subject: "out_channels") {
            editLayer(&$0, "out_channels", 1 << 40)
        },
        Case(description: "a grid a billion cells high", subject: "input.height") { s in
            var input = s["input"] as! [String: Any]
            input["height"] = 1_000_000_000
            s["input"] = input
        },
        Case(description: "a negative cell size", subject: "grid") { s in
            var input = s["input"] as! [String: Any]
            var grid = input["grid"] as! [String: Any]
            grid["cell"] = -2.0
            input["grid"] = grid
            s["input"] = input
        },
        Case(description: "layers that are not a list", subject: "architecture.server") { $0["layers"] = "conv" },
        Case(description: "valid architecture, tensors missing", subject: "server.") { _ in },
    ]

    @Test(arguments: cases)
    func refused(_ c: Case) throws {
        let st = try Self.file(c.edit)
        do {
            _ = try CooperativeDetector(st)
            Issue.record("\(c): accepted")
        } catch {
            #expect(error.subject.contains(c.subject), "\(c): \(error)")
            #expect(error.description.contains("hostile.safetensors"))
        }
    }
}

/// The same for a deep-fusion model's `architecture.deep` and its tensors.
@Suite("Hostile deep-fusion model files: typed errors, not crashes")
struct HostileDeepModelTests {
    static let deep = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
        .appendingPathComponent("Models/slimsplit-deep.safetensors").path

    /// The deep model's metadata with `edit` applied to `architecture.deep`, with its tensors unless `dropTensors`.
    static func file(dropTensors: Bool = false, _ edit: (inout [String: Any]) -> Void) throws -> Safetensors {
        let st = try Safetensors(contentsOf: deep)
        var arch = try #require(
            try JSONSerialization.jsonObject(with: Data(st.metadata["architecture"]!.utf8)) as? [String: Any])
        var d = try #require(arch["deep"] as? [String: Any])
        edit(&d)
        arch["deep"] = d
        var w = SafetensorsWriter()
        w.metadata = st.metadata
        w.metadata["architecture"] = String(decoding: try JSONSerialization.data(withJSONObject: arch), as: UTF8.self)
        if !dropTensors {
            for name in st.tensors.keys.sorted() where name.hasPrefix("deep.") && !name.contains(".int8.") {
                w.add(name, .f32, shape: st.tensors[name]!.shape, try st.floats(name))
            }
        }
        return try Safetensors(bytes: w.serialized(), file: "hostile.safetensors")
    }

    struct Case: Sendable, CustomStringConvertible {
        var description: String
        var subject: String
        var dropTensors = false
        var edit: @Sendable (inout [String: Any]) -> Void
    }

    static let cases: [Case] = [
        Case(description: "no message channels", subject: "message_channels") { $0["message_channels"] = 0 },
        Case(description: "backbone channels as a string", subject: "backbone_channels") {
            $0["backbone_channels"] = "96"
        },
        Case(description: "another geometry", subject: "geometry_channels") { $0["geometry_channels"] = 5 },
        Case(description: "a dilation of 100", subject: "backbone_dilations") { $0["backbone_dilations"] = [1, 100] },
        Case(description: "a grid a billion cells wide", subject: "grid.width") { d in
            var g = d["grid"] as! [String: Any]
            g["width"] = 1_000_000_000
            d["grid"] = g
        },
        Case(description: "a grid whose buffers would take gigabytes", subject: "grid") { d in
            var g = d["grid"] as! [String: Any]
            (g["width"], g["height"]) = (1024, 1024)
            d["grid"] = g
        },
        Case(description: "a yaw encoding it does not know", subject: "decode") { d in
            var g = d["decode"] as! [String: Any]
            g["yaw_encoding"] = "quaternion"
            d["decode"] = g
        },
        Case(description: "a peak rule it does not know", subject: "decode.peaks") { d in
            var g = d["decode"] as! [String: Any]
            g["peaks"] = "local_max_5x5"
            d["decode"] = g
        },
        Case(description: "a merge rule it does not know", subject: "decode.merge") { d in
            var g = d["decode"] as! [String: Any]
            g["merge"] = "average"
            d["decode"] = g
        },
        Case(description: "channels that do not match the tensors", subject: "deep.") { $0["head_channels"] = 32 },
        Case(description: "valid architecture, tensors missing", subject: "deep.", dropTensors: true) { _ in },
    ]

    @Test(arguments: cases)
    func refused(_ c: Case) throws {
        let st = try Self.file(dropTensors: c.dropTensors, c.edit)
        do {
            let spec = try #require(try DeepArchitecture(st))
            _ = try DeepFusionDetector(st, spec: spec)
            _ = try DeepAgentStage(st, spec: spec)
            Issue.record("\(c): accepted")
        } catch let error as ModelFileError {
            #expect(error.subject.contains(c.subject), "\(c): \(error)")
            #expect(error.description.contains("hostile.safetensors"))
        }
    }
}
