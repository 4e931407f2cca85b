import Foundation
import Testing

/// The shipped binary stops gracefully on SIGTERM and SIGINT: it prints its closing table and
/// exits 0 (it used to ignore both signals and had to be killed).
@Suite("slimsplit server stops on SIGTERM and SIGINT", .serialized)
struct ShutdownTests {
    /// `slimsplit` beside the test bundle (`swift build --build-tests` builds it).
    static let binary: String? = {
        let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for candidate in [dir, dir.deletingLastPathComponent()] {
            let p = candidate.appendingPathComponent("slimsplit").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }()

    @Test(.enabled(if: binary != nil, "the slimsplit binary is not built beside the tests"), arguments: [SIGTERM, SIGINT])
    func stops(on sig: Int32) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-shutdown-\(getpid())-\(sig)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = dir.appendingPathComponent("server.yaml")
        try "endpoint: tcp://127.0.0.1:0\ncurve:\n  enabled: false\n".write(to: config, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary!)
        p.arguments = ["server", "--config", config.path, "--status-interval", "0"]
        // Output to files, polled without blocking (a blocking read would hold a thread of the
        // concurrency pool the other suites' sockets run on).
        let outFile = dir.appendingPathComponent("out.txt"), errFile = dir.appendingPathComponent("err.txt")
        FileManager.default.createFile(atPath: outFile.path, contents: nil)
        FileManager.default.createFile(atPath: errFile.path, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: outFile)
        p.standardError = try FileHandle(forWritingTo: errFile)
        try p.run()
        let log = { (try? String(contentsOf: errFile, encoding: .utf8)) ?? "" }
        #expect(await eventually(60) { log().contains("listening") || !p.isRunning }, "the server never said it listens")
        #expect(log().contains("listening"), "\(log())")
        kill(p.processIdentifier, sig)
        let stopped = await eventually(30) { !p.isRunning }
        if !stopped { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        let table = (try? String(contentsOf: outFile, encoding: .utf8)) ?? ""
        #expect(p.terminationReason == .exit && p.terminationStatus == 0, "status \(p.terminationStatus), \(p.terminationReason)")
        #expect(table.contains("agent") && table.contains("frames"), "no closing table: \(table)")
    }
}

/// `slimsplit agent --check` tells the person at the board what is wrong.
@Suite("slimsplit agent --check")
struct AgentCheckTests {
    @Test(.enabled(if: ShutdownTests.binary != nil, "the slimsplit binary is not built beside the tests"))
    func unreachableServer() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-check-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = dir.appendingPathComponent("agent.yaml")
        try "agent_id: car-1\nserver: tcp://127.0.0.1:9\ncurve:\n  enabled: false\n".write(to: config, atomically: true, encoding: .utf8)
        let out = dir.appendingPathComponent("out.txt")
        FileManager.default.createFile(atPath: out.path, contents: nil)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ShutdownTests.binary!)
        p.arguments = ["agent", "--config", config.path, "--check", "--log-level", "error"]
        p.standardOutput = try FileHandle(forWritingTo: out)
        try p.run()
        #expect(await eventually(60) { !p.isRunning })
        if p.isRunning { p.terminate() }
        p.waitUntilExit()
        let text = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        #expect(p.terminationStatus == 1, "\(text)")
        #expect(text.contains("ok   config") && text.contains("ok   kernels") && text.contains("FAIL server"), "\(text)")
    }
}
