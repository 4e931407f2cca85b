import Foundation
import Logging
import SlimLive
import TestSupport
import Testing

/// `slimsplit health` (the images' HEALTHCHECK and an exec probe) and the probe under it.
@Suite("health probe")
struct HealthTests {
    @Test("the probe gets the metrics text, and fails on a 404 and on a closed port")
    func probe() throws {
        let endpoint = try HTTPService(
            host: "127.0.0.1", port: 0, routes: ["/metrics": .prometheus { "slimsplit_up 1\n" }], logger: Logger(label: "test"))
        let port = endpoint.port
        guard case .success(let body) = MetricsProbe.get(host: "127.0.0.1", port: port, path: "/metrics", timeoutSeconds: 5)
        else {
            Issue.record("no answer from the endpoint on port \(port)")
            return
        }
        #expect(body.hasPrefix("slimsplit_up 1\n"), "\(body)")
        guard case .failure(let notFound) = MetricsProbe.get(host: "127.0.0.1", port: port, path: "/x", timeoutSeconds: 5)
        else {
            Issue.record("a 404 counted as healthy")
            return
        }
        #expect(notFound.description.contains("404"), "\(notFound)")
        endpoint.close()
        // Refused, or reset if the listening socket was still closing: unhealthy either way.
        guard case .failure = MetricsProbe.get(host: "127.0.0.1", port: port, path: "/metrics", timeoutSeconds: 5) else {
            Issue.record("a closed port counted as healthy")
            return
        }
    }

    @Test(
        "slimsplit health: exit 0 while the endpoint of its config answers, 1 once it is gone, a named error without a port",
        .enabled(if: ShutdownTests.binary != nil, "the slimsplit binary is not built beside the tests"))
    func command() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-health-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let endpoint = try HTTPService(
            host: "127.0.0.1", port: 0, routes: ["/metrics": .prometheus { "slimsplit_up 1\n" }], logger: Logger(label: "test"))
        let config = dir.appendingPathComponent("agent.yaml")
        try "agent_id: a\nmetrics: {port: \(endpoint.port), host: 127.0.0.1}\n".write(
            to: config, atomically: true, encoding: .utf8)
        let health = [ShutdownTests.binary!, "health", "--config", config.path]
        let up = await runProcess(health + ["--print"], timeout: 60)
        #expect(up?.status == 0, "\(up?.output ?? "did not run")")
        #expect(up?.output.contains("slimsplit_up 1") == true)
        endpoint.close()
        let down = await runProcess(health, timeout: 60)
        #expect(down?.status == 1, "\(down?.output ?? "did not run")")
        #expect(down?.output.contains("unhealthy: http://127.0.0.1:\(endpoint.port)/metrics") == true)
        let off = dir.appendingPathComponent("off.yaml")
        try "agent_id: a\nmetrics: {port: 0}\n".write(to: off, atomically: true, encoding: .utf8)
        let none = await runProcess([ShutdownTests.binary!, "health", "--config", off.path], timeout: 60)
        #expect(none?.status != 0 && none?.output.contains("metrics.port is 0") == true, "\(none?.output ?? "")")
    }
}
