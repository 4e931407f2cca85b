import Foundation
import SlimConfig
import SlimFleet
import SlimPipeline
import SlimTransport
import Testing

@Suite("Configs: validated with errors that name the file and the key")
struct ConfigTests {
    static let file = "test/server.yaml"

    func serverError(_ yaml: String) -> ConfigError? {
        do {
            let root = try ConfigSection.parse(yaml, file: Self.file)
            _ = try ServerConfig(root)
            try root.finish()
            return nil
        } catch { return error }
    }

    @Test func shippedConfigsLoad() throws {
        let server = try ServerConfig.load(file: repoRoot.appendingPathComponent("Configs/server.yaml").path)
        #expect(server.endpoint == "tcp://0.0.0.0:5555")
        #expect(server.curve?.secretKey.hasSuffix("Configs/keys/server.key") == true)
        let agent = try AgentConfig.load(file: repoRoot.appendingPathComponent("Configs/agent.yaml").path)
        #expect(agent.agentID == "car-1")
        #expect(agent.synthetic.channels == 64)
        // The shipped pair runs the deep-fusion model, agents sending codebook indices.
        #expect(server.model?.hasSuffix("Models/slimsplit-deep.safetensors") == true)
        #expect(agent.source?.model.hasSuffix("Models/slimsplit-deep.safetensors") == true)
        #expect(agent.source?.codebook == true)
    }

    @Test func badPayloadIsNamed() {
        do {
            let root = try ConfigSection.parse(
                "agent_id: car-1\nserver: tcp://x:1\ncurve: {enabled: false}\nsource: {recording: r.mcap, model: m.safetensors, payload: vq}\n",
                file: "a.yaml")
            _ = try AgentConfig(root)
            Issue.record("accepted payload: vq")
        } catch {
            #expect(error.key == "source.payload")
            #expect(error.problem.contains("scalar or codebook"))
        }
    }

    @Test("docs/configuration.md documents every key the readers accept")
    func everyKeyDocumented() throws {
        let doc = try String(contentsOf: repoRoot.appendingPathComponent("docs/configuration.md"), encoding: .utf8)
        let parts = doc.components(separatedBy: "## Agent")
        try #require(parts.count == 2)
        let server = try ConfigSection.load(file: repoRoot.appendingPathComponent("Configs/server.yaml").path)
        _ = try ServerConfig(server)
        let agent = try ConfigSection.load(file: repoRoot.appendingPathComponent("Configs/agent.yaml").path)
        _ = try AgentConfig(agent)
        #expect(server.keyPaths.count >= 25 && agent.keyPaths.count >= 30)
        for k in server.keyPaths {
            #expect(parts[0].contains("| `\(k)` |"), "server key \(k) is not in docs/configuration.md")
        }
        for k in agent.keyPaths {
            #expect(parts[1].contains("| `\(k)` |"), "agent key \(k) is not in docs/configuration.md")
        }
    }

    @Test("docker/ configs are valid")
    func dockerConfigsLoad() throws {
        let server = try ServerConfig.load(file: repoRoot.appendingPathComponent("docker/server.yaml").path)
        #expect(server.model == "/opt/slimsplit/Models/slimsplit-deep.safetensors")
        for a in ["car-1", "car-2", "rsu-1"] {
            let c = try AgentConfig.load(file: repoRoot.appendingPathComponent("docker/agent-\(a).yaml").path)
            #expect(c.agentID == a)
            #expect(c.source?.adaptDeadline != nil)
        }
    }

    @Test("deploy/k8s: the region servers' configs and the region map are valid")
    func kubernetesConfigsLoad() throws {
        let k8s = repoRoot.appendingPathComponent("deploy/k8s")
        let map = try RegionMap.load(file: k8s.appendingPathComponent("regions.yaml").path)
        for region in ["r0", "r1", "r2"] {
            let c = try ServerConfig.load(file: k8s.appendingPathComponent("server-\(region).yaml").path)
            let fleet = try #require(c.fleet)
            #expect(fleet.region == region && map.region(named: region) != nil)
            #expect(fleet.advertise.contains("slimsplit-\(region)."))
            #expect(c.curve != nil && c.model == "/opt/slimsplit/Models/slimsplit-deep.safetensors")
        }
    }

    @Test("fleet: both etcd and region, an advertised endpoint agents can reach")
    func fleetKeys() {
        #expect(serverError("endpoint: tcp://127.0.0.1:1\ncurve: {enabled: false}\nfleet: {region: a}\n")?.key == "fleet.region")
        let wildcard = serverError(
            "endpoint: tcp://0.0.0.0:1\ncurve: {enabled: false}\nfleet: {etcd: 'http://e:2379', region: a}\n")
        #expect(wildcard?.key == "fleet.advertise")
        #expect(
            serverError(
                "endpoint: tcp://0.0.0.0:1\ncurve: {enabled: false}\nfleet: {etcd: 'http://e:2379', region: a, advertise: 'tcp://s:1'}\n")
                == nil)
    }

    @Test func unknownKeyIsNamedWithASuggestion() {
        let e = serverError("endpoint: tcp://127.0.0.1:1\ncurve: {enabled: false}\nsocket:\n  send_hwn: 5\n")
        #expect(e?.file == Self.file)
        #expect(e?.key == "socket.send_hwn")
        #expect(e?.description.contains("did you mean 'send_hwm'") == true)
    }

    @Test func wrongTypeAndRange() {
        #expect(
            serverError("endpoint: tcp://x:1\ncurve: {enabled: false}\nlimits: {max_channels: lots}\n")?.key
                == "limits.max_channels")
        let e = serverError("endpoint: tcp://x:1\ncurve: {enabled: false}\nlimits: {max_channels: 0}\n")
        #expect(e?.key == "limits.max_channels")
        #expect(e?.problem.contains("out of range") == true)
        #expect(serverError("endpoint: tcp://x:1\ncurve: {enabled: maybe}\n")?.key == "curve.enabled")
    }

    @Test func missingRequiredKey() {
        #expect(serverError("curve: {enabled: false}\n")?.key == "endpoint")
        #expect(
            serverError("endpoint: tcp://x:1\ncurve: {enabled: true, allowed_keys: k}\n")?.key == "curve.secret_key")
        #expect(serverError("endpoint: http://x:1\ncurve: {enabled: false}\n")?.key == "endpoint")
    }

    @Test func badYamlNamesTheFile() {
        let e = serverError("endpoint: [unclosed\n")
        #expect(e?.file == Self.file)
        #expect(e?.problem.contains("YAML") == true)
    }

    @Test func badAgentID() {
        do {
            let root = try ConfigSection.parse("agent_id: 'car 1'\nserver: tcp://x:1\n", file: "a.yaml")
            _ = try AgentConfig(root)
            Issue.record("accepted a bad agent_id")
        } catch {
            #expect(error.key == "agent_id")
        }
    }
}

@Suite("Curve key files")
struct KeyFileTests {
    @Test("keygen's files load back: secret key (mode 0600), public key, allow-list folder")
    func roundTrip() throws {
        let dir = NSTemporaryDirectory() + "slimsplit-keys-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let pair = try CurveKeyPair.generate()
        try pair.write(name: "car-1", directory: dir)
        #expect(try CurveKeyPair(secretKeyFile: "\(dir)/car-1.key") == pair)
        #expect(try CurveKey(file: "\(dir)/car-1.pub") == pair.publicKey)
        #expect(try CurveAllowList(directory: dir).names[pair.publicKey] == "car-1")
        let mode =
            (try FileManager.default.attributesOfItem(atPath: "\(dir)/car-1.key")[.posixPermissions] as? Int) ?? 0
        #expect(mode == 0o600)
        // Windows line endings too.
        try "\(pair.publicKey.z85)\r\n".write(toFile: "\(dir)/crlf.pub", atomically: true, encoding: .utf8)
        #expect(try CurveKey(file: "\(dir)/crlf.pub") == pair.publicKey)
        #expect(throws: KeyFileError.self) { try CurveKey(file: "\(dir)/missing.pub") }
    }
}
