import Foundation
import TestSupport
import Testing

/// The live LiDAR path end to end, with the shipped binary: `slimsplit replay --as velodyne`
/// streams the sample's car_1 as VLP-32C packets over UDP into a live agent, which featurizes,
/// encodes and sends each sweep to a fusion server and gets Results back.
@Suite("live LiDAR input", .serialized)
struct LiveInputTests {
    @Test(
        "a recording streamed as Velodyne packets into a live agent: every sweep with the recording's point count, Results back",
        .enabled(if: ShutdownTests.binary != nil, "the slimsplit binary is not built beside the tests"))
    func velodyneIntoAgent() async throws {
        let bin = ShutdownTests.binary!
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-velodyne-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = repoRoot.appendingPathComponent("Models/slimsplit-bev.safetensors").path
        let serverConfig = dir.appendingPathComponent("server.yaml")
        try "endpoint: tcp://127.0.0.1:0\ncurve: {enabled: false}\nfusion: {model: \(model)}\nmetrics: {port: 0}\n"
            .write(
                to: serverConfig, atomically: true, encoding: .utf8)
        let serverLog = dir.appendingPathComponent("server.txt")
        let server = try start(
            bin, ["server", "--config", serverConfig.path, "--status-interval", "0"], log: serverLog)
        defer { if server.isRunning { server.terminate() } }
        var endpoint: String?
        for _ in 0..<1200 where endpoint == nil && server.isRunning {
            let text = (try? String(contentsOf: serverLog, encoding: .utf8)) ?? ""
            if let r = text.range(of: "endpoint=tcp://127.0.0.1:") {
                endpoint = "tcp://127.0.0.1:" + text[r.upperBound...].prefix { $0.isNumber }
            }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        let server_ = try #require(endpoint, "the server did not say where it listens")
        let udp = freeLoopbackPort(udp: true)
        let agentConfig = dir.appendingPathComponent("agent.yaml")
        try """
        agent_id: car-1
        server: \(server_)
        curve: {enabled: false}
        source: {kind: velodyne, listen: "udp://127.0.0.1:\(udp)", lidar_model: VLP-32C, model: \(model), bits: 4, mount: {z: 1.8}}
        """.write(to: agentConfig, atomically: true, encoding: .utf8)
        let summary = dir.appendingPathComponent("agent.json")
        let agentLog = dir.appendingPathComponent("agent.txt")
        let agent = try start(bin, ["agent", "--config", agentConfig.path, "--summary", summary.path], log: agentLog)
        defer { if agent.isRunning { agent.terminate() } }
        var listening = false
        for _ in 0..<600 where !listening && agent.isRunning {
            listening = ((try? String(contentsOf: agentLog, encoding: .utf8)) ?? "").contains("velodyne")
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        #expect(
            listening,
            "the agent never opened its UDP socket: \((try? String(contentsOf: agentLog, encoding: .utf8)) ?? "")")
        let replay = await runProcess(
            [
                bin, "replay", repoRoot.appendingPathComponent("Tests/Fixtures/sample.mcap").path, "--as", "velodyne",
                "--agent", "car_1", "--lidar-model", "VLP-32C", "--to", "udp://127.0.0.1:\(udp)",
            ], timeout: 120)
        #expect(replay?.status == 0, "\(replay?.output ?? "replay did not run")")
        let sent = (replay?.output.split(separator: "\n").last).flatMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        try await Task.sleep(nanoseconds: 1_500_000_000)  // the last sweep closes after 0.3 s of quiet; Results come back
        kill(agent.processIdentifier, SIGTERM)
        for _ in 0..<600 where agent.isRunning { try await Task.sleep(nanoseconds: 50_000_000) }
        let got = (try? Data(contentsOf: summary)).flatMap {
            try? JSONSerialization.jsonObject(with: $0) as? [String: Any]
        }
        let velodyne = got?["velodyne"] as? [String: Any]
        let sentCounts = sent?["points_per_sweep"] as? [Int] ?? []
        let gotCounts = velodyne?["points_per_sweep"] as? [Int] ?? []
        #expect(sentCounts.count == 30 && (sent?["out_of_range"] as? Int) == 0, "\(sent ?? [:])")
        #expect(gotCounts == sentCounts, "agent \(gotCounts) vs sent \(sentCounts)")
        #expect((velodyne?["counters"] as? [String: Int])?.isEmpty == true, "\(velodyne ?? [:])")
        // Every sweep was assembled (above); a busy machine may skip some in the encoder (newest wins).
        #expect(
            (got?["results"] as? Int ?? 0) > 0,
            "\(got ?? [:]) \((try? String(contentsOf: agentLog, encoding: .utf8)) ?? "")")
        #expect((got?["acked"] as? Int ?? 0) + (got?["dropped"] as? Int ?? 0) >= (got?["frames"] as? Int ?? 1))
    }

    private func start(_ bin: String, _ args: [String], log: URL) throws -> Process {
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin)
        p.arguments = args
        p.standardOutput = try FileHandle(forWritingTo: log)
        p.standardError = p.standardOutput
        try p.run()
        return p
    }
}
