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
    func stops(on sig: Int32) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-shutdown-\(getpid())-\(sig)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = dir.appendingPathComponent("server.yaml")
        try "endpoint: tcp://127.0.0.1:0\ncurve:\n  enabled: false\n".write(to: config, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary!)
        p.arguments = ["server", "--config", config.path, "--status-interval", "0"]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        // Wait (event-driven, generous) for the server to say it listens, then signal it.
        var log = Data()
        let deadline = Date().addingTimeInterval(60)
        while !String(decoding: log, as: UTF8.self).contains("listening"), Date() < deadline, p.isRunning {
            log.append(err.fileHandleForReading.availableData)
        }
        #expect(String(decoding: log, as: UTF8.self).contains("listening"), "the server never said it listens: \(String(decoding: log, as: UTF8.self))")
        kill(p.processIdentifier, sig)
        let stopBy = Date().addingTimeInterval(30)
        while p.isRunning, Date() < stopBy { usleep(20_000) }
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        let table = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(p.terminationReason == .exit && p.terminationStatus == 0, "status \(p.terminationStatus), \(p.terminationReason)")
        #expect(table.contains("agent") && table.contains("frames"), "no closing table: \(table)")
    }
}
