import Foundation
import SlimSensors
import TestSupport
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

    @Test(
        .enabled(if: binary != nil, "the slimsplit binary is not built beside the tests"), arguments: [SIGTERM, SIGINT])
    func stops(on sig: Int32) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-shutdown-\(getpid())-\(sig)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let config = dir.appendingPathComponent("server.yaml")
        // Port 0 everywhere: suites run in parallel, and a fixed metrics port would collide.
        try "endpoint: tcp://127.0.0.1:0\ncurve:\n  enabled: false\nmetrics:\n  port: 0\n".write(
            to: config, atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: Self.binary!)
        p.arguments = ["server", "--config", config.path, "--status-interval", "0"]
        // Output to files, polled without blocking (a blocking read would hold a thread of the
        // concurrency pool the other suites' sockets run on).
        let outFile = dir.appendingPathComponent("out.txt")
        let errFile = dir.appendingPathComponent("err.txt")
        _ = FileManager.default.createFile(atPath: outFile.path, contents: nil)
        _ = FileManager.default.createFile(atPath: errFile.path, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: outFile)
        p.standardError = try FileHandle(forWritingTo: errFile)
        try p.run()
        let log = { (try? String(contentsOf: errFile, encoding: .utf8)) ?? "" }
        #expect(
            await eventually(60) { log().contains("listening") || !p.isRunning }, "the server never said it listens")
        #expect(log().contains("listening"), "\(log())")
        kill(p.processIdentifier, sig)
        let stopped = await eventually(60) { !p.isRunning }
        if !stopped { kill(p.processIdentifier, SIGKILL) }
        p.waitUntilExit()
        let table = (try? String(contentsOf: outFile, encoding: .utf8)) ?? ""
        #expect(
            p.terminationReason == .exit && p.terminationStatus == 0,
            "status \(p.terminationStatus), \(p.terminationReason)")
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
        try "agent_id: car-1\nserver: tcp://127.0.0.1:9\ncurve:\n  enabled: false\n".write(
            to: config, atomically: true, encoding: .utf8)
        let out = dir.appendingPathComponent("out.txt")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
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
        #expect(
            text.contains("ok   config") && text.contains("ok   kernels") && text.contains("FAIL server"), "\(text)")
    }
}

/// The server's recording survives `kill -9`: its open chunk is written out every
/// `fusion.record_flush_s`, so after the kill every message recorded more than that (plus the
/// flush timer's period) before it reads back, with SlimSplit's reader and with the official
/// `mcap` reader's stream reader (the file has no summary; both read until the cut).
@Suite("the server's recording survives SIGKILL", .serialized)
struct CrashSafeRecordingTests {
    static let officialReader = pythonImportsNow("mcap.stream_reader")

    static let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test(
        .enabled(if: ShutdownTests.binary != nil, "the slimsplit binary is not built beside the tests"),
        .enabled(if: officialReader, "python3 with the mcap package is not available (scripts/test installs it)"))
    func killNine() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-kill9-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let model = Self.repo.appendingPathComponent("Models/slimsplit-bev.safetensors").path
        let recording = dir.appendingPathComponent("fused.mcap").path
        let lines = dir.appendingPathComponent("results.jsonl").path
        try """
        endpoint: tcp://127.0.0.1:0
        curve:
          enabled: false
        fusion:
          model: \(model)
          record: \(recording)
          record_flush_s: 0.2
          json_lines: \(lines)
        metrics:
          port: 0
        """.write(toFile: dir.appendingPathComponent("server.yaml").path, atomically: true, encoding: .utf8)
        func start(_ args: [String], _ name: String) throws -> (Process, () -> String) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: ShutdownTests.binary!)
            p.arguments = args
            let err = dir.appendingPathComponent("\(name).log")
            _ = FileManager.default.createFile(atPath: err.path, contents: nil)
            p.standardError = try FileHandle(forWritingTo: err)
            p.standardOutput = FileHandle.nullDevice
            try p.run()
            return (p, { (try? String(contentsOf: err, encoding: .utf8)) ?? "" })
        }
        let (server, serverLog) = try start(
            ["server", "--config", dir.appendingPathComponent("server.yaml").path, "--status-interval", "0"], "server")
        defer { if server.isRunning { kill(server.processIdentifier, SIGKILL) } }
        #expect(
            await eventually(120) { serverLog().contains("listening") || !server.isRunning },
            "the server never listened")
        guard let range = serverLog().range(of: #"tcp://127\.0\.0\.1:[0-9]+"#, options: .regularExpression) else {
            Issue.record("no endpoint in the server's log: \(serverLog())")
            return
        }
        let endpoint = String(serverLog()[range])
        try """
        agent_id: car-1
        server: \(endpoint)
        curve:
          enabled: false
        source:
          recording: \(Self.repo.appendingPathComponent("Tests/Fixtures/sample.mcap").path)
          agent: car_1
          model: \(model)
          bits: 4
          loop: true
        """.write(toFile: dir.appendingPathComponent("agent.yaml").path, atomically: true, encoding: .utf8)
        let (agent, agentLog) = try start(
            ["agent", "--config", dir.appendingPathComponent("agent.yaml").path], "agent")
        defer { if agent.isRunning { kill(agent.processIdentifier, SIGKILL) } }
        let results = { ((try? String(contentsOfFile: lines, encoding: .utf8)) ?? "").split(separator: "\n").count }
        // Enough Results for several chunks, then a count that must all be flushed by the kill.
        #expect(
            await eventually(120) { results() >= 20 || !agent.isRunning || !server.isRunning },
            "no Results: \(serverLog().suffix(2000)) \(agentLog().suffix(2000))")
        let before = results()
        try await Task.sleep(nanoseconds: 1_500_000_000)  // > record_flush_s + the 0.2 s flush timer, with margin
        kill(server.processIdentifier, SIGKILL)
        server.waitUntilExit()
        let total = results()
        #expect(server.terminationReason == .uncaughtSignal && before >= 20)

        // SlimSplit's reader: every message up to the cut, then a typed error (no footer).
        var ours: [UInt64] = []
        var error: MCAPError?
        do {
            try MCAPReader(path: recording).forEachMessage { m in
                if m.channel.topic == Topics.fusedDetections { ours.append(m.logTime) }
                return true
            }
        } catch let e { error = e }
        #expect(error != nil, "a file cut by kill -9 read as complete")
        #expect(
            ours.count >= before && ours.count <= total,
            "read back \(ours.count) detections; \(before) were recorded 1.5 s before the kill, \(total) in all")

        // The official reader, streaming until the cut.
        let script = """
            import sys
            from mcap.stream_reader import StreamReader
            from mcap.records import Channel, Message
            topics, times = {}, []
            try:
                for r in StreamReader(open(sys.argv[1], "rb"), validate_crcs=True).records:
                    if isinstance(r, Channel): topics[r.id] = r.topic
                    elif isinstance(r, Message) and topics.get(r.channel_id) == "/fusion/detections": times.append(r.log_time)
            except Exception as e:
                print("cut:", type(e).__name__, file=sys.stderr)
            print(" ".join(map(str, times)))
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", "-c", script, recording]
        let out = dir.appendingPathComponent("official.txt")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: out)
        try p.run()
        #expect(await eventually(60) { !p.isRunning })
        let official = ((try? String(contentsOf: out, encoding: .utf8)) ?? "").split(separator: " ").compactMap {
            UInt64($0.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        #expect(official == ours, "the official reader read \(official.count) detections, SlimSplit's \(ours.count)")
        print(
            "kill -9 mid-session: \(ours.count) of \(total) fused detections read back by SlimSplit's reader and the official one "
                + "(\(before) recorded 1.5 s before the kill)")
    }
}
