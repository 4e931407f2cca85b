import SlimConfig
import SlimPipeline
import SlimSensors
import Yams

// The YAML config readers (server, agent, scene). Invariants: each ends in a config or a
// ConfigError; a document that is accepted is accepted again, as the same config, after Yams
// writes it back out (so nothing depends on formatting).

func fuzzConfig(_ input: UnsafeRawBufferPointer) {
    // Composed once here (what ConfigSection.parse does), then read by each reader.
    guard let node = compose(String(decoding: input, as: UTF8.self)) else { return }
    let first = configs(node)
    guard first.contains(where: { $0 != nil }), let again = try? Yams.serialize(node: node), let back = compose(again)
    else { return }
    invariant(configs(back) == first, "a config reads differently after Yams writes it back:\n---\n\(again)")
}

/// The document's node (an empty document is an empty mapping); nil when it is not YAML.
private func compose(_ text: String) -> Node? {
    do { return try Yams.compose(yaml: text, .default, .default, .utf8) ?? .mapping(.init([])) } catch { return nil }
}

/// Each reader's result, described (nil: refused).
private func configs(_ node: Node) -> [String?] {
    func one(_ make: (ConfigSection) throws(ConfigError) -> Any) -> String? {
        do {
            let root = try ConfigSection(file: "fuzz.yaml", path: "", node: node)
            let c = try make(root)
            try root.finish()
            return String(reflecting: c)
        } catch {
            return nil
        }
    }
    return [one(ServerConfig.init), one(AgentConfig.init), one(SceneConfig.init)]
}
