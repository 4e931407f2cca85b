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
