import ArgumentParser
import Foundation
import Logging
import SlimAgent
import SlimConfig
import SlimLive
import SlimPipeline
import SlimServer
import SlimTransport

struct DemoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract:
            "Cooperative perception on the committed sample: a fusion server and three agents on loopback, Curve on.",
        discussion: """
            Each agent replays its LiDAR from Tests/Fixtures/sample.mcap at the recorded rate, runs the agent half of
            Models/slimsplit-deep.safetensors (int8 encoder, backbone and own head) and sends the cells its head marks
            as residual-codebook indices (about 0.5 kB a frame); the server fuses and returns detections. Prints a live
            per-agent table and, at the end, fused AP against each agent alone. Without --bits, --threshold and
            --payload, the model's recommended message (a map model's: full-width 4-bit maps).
            --transport runs the transport-only session instead (synthetic features, the Python reference agent).
            """)

    @Flag(help: "Transport-only demo: synthetic features, two Swift agents and the Python reference agent.")
    var transport = false

    @Option(help: "Recording for the cooperative demo.")
    var recording: String = "Tests/Fixtures/sample.mcap"

    @Option(help: "Model file for the cooperative demo.")
    var model: String = "Models/slimsplit-deep.safetensors"

    @Option(help: "Bits per transmitted value (cooperative demo; default: the model's recommended message).")
    var bits: Int?

    @Option(
        help:
            "Sparsity threshold (cooperative demo; 0: every cell): on the feature norm, or a deep-fusion model's heatmap probability (default: the model's recommended message).")
    var threshold: Float?

    @Option(
        help: ArgumentHelp(
            "scalar codes or a deep-fusion model's residual-codebook indices (cooperative demo; default: the model's recommended message).",
            valueName: "scalar|codebook"))
    var payload: MessagePayload?

    @Option(help: "Seconds to stream.")
    var seconds: Double = 3

    @Option(help: "Frames per second per agent.")
    var rate: Double = 10

    @Flag(help: "Do not start the Python reference agent.")
    var noReference = false

    @Option(
        help:
            "Serve the live view on 127.0.0.1:PORT: dashboard http://127.0.0.1:PORT/ and Foxglove WebSocket ws://127.0.0.1:PORT/ (cooperative demo)."
    )
    var livePort: Int?

    @Option(help: "Times to play the recording (cooperative demo; default 1, or 20 with --live-port).")
    var loops: Int?

    @OptionGroup var log: LogOptions

    func run() async throws {
        if !transport {
            if FileManager.default.fileExists(atPath: model) {
                try await cooperative()
                return
            }
            print("note: \(model) not found; running the transport demo (synthetic features) instead")
        }
        var logOptions = log
        if logOptions.logLevel == "info" { logOptions.logLevel = "warning" }
        let logger = try logOptions.bootstrap(label: "slimsplit.demo")

        let serverKeys = try CurveKeyPair.generate()
        let agentKeys = try (0..<2).map { _ in try CurveKeyPair.generate() }
        let refKeys = try CurveKeyPair.generate()
        var allow = CurveAllowList()
        allow.names[agentKeys[0].publicKey] = "car-1"
        allow.names[agentKeys[1].publicKey] = "rsu-1"
        allow.names[refKeys.publicKey] = "ref-1"

        let router = try RouterEndpoint(
            bind: "tcp://127.0.0.1:0", curve: CurveServer(keyPair: serverKeys, allowList: allow), logger: logger)
        let server = FeatureServer(endpoint: router, logger: logger)
        let serverTask = Task { await server.run() }
        print("server on \(router.endpoint), Curve on, \(allow.names.count) allowed keys")

        let sources = [
            AgentConfig.SyntheticSource(
                frames: Int(seconds * rate), rateHz: rate, channels: 64, height: 32, width: 32,
                bits: 8, widthIndex: 3, occupancy: 0.3, mask: false, lz4: true),
            AgentConfig.SyntheticSource(
                frames: Int(seconds * rate), rateHz: rate, channels: 32, height: 32, width: 32,
                bits: 4, widthIndex: 1, occupancy: 0.3, mask: true, lz4: true),
        ]
        var agents: [FeatureAgent] = []
        for (i, id) in ["car-1", "rsu-1"].enumerated() {
            agents.append(
                try FeatureAgent(
                    identity: AgentIdentity(agentID: id, modelID: "synthetic"), server: router.endpoint,
                    curve: CurveClient(keyPair: agentKeys[i], serverKey: serverKeys.publicKey),
                    maxFrameBytes: maxFrameBytes(sources[i], agentID: id), logger: logger))
        }
        let consumers = agents.map { a in Task { await a.run() } }

        var reference: Process?
        if !noReference {
            reference = try startReferenceAgent(
                endpoint: router.endpoint, serverKeys: serverKeys, keys: refKeys,
                frames: Int(seconds * rate), interval: 1 / rate)
        }

        let stop = Locked(false)
        let start = SystemClock.monotonicNs()
        let producers = agents.enumerated().map { i, a in
            Task { await runSynthetic(agent: a, source: sources[i], seed: UInt64(i + 1), stop: stop) }
        }
        let live = Task {
            while !Task.isCancelled {
                await sleepSeconds(1)
                if Task.isCancelled { break }
                print("\n[\(fmt(Double(SystemClock.monotonicNs() - start) / 1e9, 0)) s]")
                print(serverTable(server).render())
            }
        }
        for p in producers { await p.value }
        let deadline = SystemClock.monotonicNs() + 3_000_000_000
        while SystemClock.monotonicNs() < deadline,
            agents.contains(where: { $0.stats.acks < $0.stats.framesSubmitted - $0.stats.framesReplaced })
                || reference?.isRunning == true
        {
            await sleepSeconds(0.05)
        }
        live.cancel()
        let elapsed = Double(SystemClock.monotonicNs() - start) / 1e9
        var referenceOK = true
        if let reference {
            if reference.isRunning { reference.terminate() }
            reference.waitUntilExit()
            referenceOK = reference.terminationStatus == 0
        }
        for a in agents { a.endpoint.close() }
        for c in consumers { await c.value }
        router.close()
        await serverTask.value

        print("\n== server: per-agent summary ==")
        print(serverTable(server).render())
        print("\n== Swift agents: their own view ==")
        print(agentTable(agents, seconds: elapsed).render())
        let rejected = server.rejections.values.reduce(0, +)
        let allAcked = agents.allSatisfy {
            $0.stats.acks > 0 && $0.stats.acks == $0.stats.framesSubmitted - $0.stats.framesReplaced
        }
        print(
            "\n\(allAcked && referenceOK ? "OK" : "FAILED"): \(agents.count + (reference == nil ? 0 : 1)) agents, \(rejected) rejected messages, \(fmt(elapsed, 1)) s"
        )
        if !(allAcked && referenceOK) { throw ExitCode(1) }
    }

    private func cooperative() async throws {
        var logOptions = log
        if logOptions.logLevel == "info" { logOptions.logLevel = "warning" }
        let logger = try logOptions.bootstrap(label: "slimsplit.demo")
        for f in [recording, model] where !FileManager.default.fileExists(atPath: f) {
            throw ValidationError("\(f) not found (run from the repository root)")
        }
        var config = try CooperativeSession.Config(
            recording: recording, model: model, bits: bits, threshold: threshold, payload: payload)
        config.realTime = true
        config.loops = loops ?? (livePort == nil ? 1 : 20)
        let session = CooperativeSession(config)
        var live: LiveView?
        if let livePort {
            let view = try LiveView(
                host: "127.0.0.1", port: livePort, token: nil, metrics: { "" }, logger: Logger(label: "slimsplit.live"))
            let lastState = Locked<UInt64>(0)
            session.onFused = { outs, server, fusion in
                let now = SystemClock.wallNs()
                view.fused(outs, nowWallNs: now)
                let due = lastState.withLock { last in
                    guard now &- last >= 500_000_000 else { return false }
                    last = now
                    return true
                }
                if due { view.tick(server: server, fusion: fusion, nowWallNs: now) }
            }
            live = view
            print(
                "live view: dashboard http://127.0.0.1:\(view.http.port)/  Foxglove ws://127.0.0.1:\(view.http.port)/")
        }
        defer { live?.close() }
        print("server and agents on 127.0.0.1, Curve on; \(recording) at its recorded rate, \(config.messageDescription)")
        try await session.run(logger: logger) { done, total in
            if done % 10 == 0 || done == total {
                print("\n[frame \(done)/\(total)]")
                print(evalTable([session]).render())
            }
        }
        let r = evalReport([session])
        let fused = r["fused_ap"] as! [String: Double]
        let alone = r["alone_ap"] as! [String: Double]
        print(
            """

            == summary ==
            fused AP@0.5 \(fmt(fused["0.5"]!)) vs single agent \(fmt(alone["0.5"]!))  (AP@0.3 \(fmt(fused["0.3"]!)) vs \(fmt(alone["0.3"]!)), AP@0.7 \(fmt(fused["0.7"]!)) vs \(fmt(alone["0.7"]!)))
            server fusion p50 \(fmt((r["server_fusion_ms"] as! [String: Double])["p50"]!, 2)) ms; \(session.rejected) rejected messages
            """)
        if fused["0.5"]! <= alone["0.5"]! { print("note: fusion did not beat the single agent on this recording") }
    }

    /// Starts Protocol/reference/agent.py with key files in a temporary folder, or returns nil
    /// (with a note) when python3, pyzmq or lz4 is missing.
    private func startReferenceAgent(
        endpoint: String, serverKeys: CurveKeyPair, keys: CurveKeyPair,
        frames: Int, interval: Double
    ) throws -> Process? {
        let script = "Protocol/reference/agent.py"
        guard FileManager.default.fileExists(atPath: script) else {
            print("note: \(script) not found (run from the repository root); skipping the reference agent")
            return nil
        }
        let check = Process()
        check.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        check.arguments = ["python3", "-c", "import zmq, lz4"]
        check.standardError = FileHandle.nullDevice
        do { try check.run() } catch {
            print("note: python3 not found; skipping the reference agent")
            return nil
        }
        check.waitUntilExit()
        guard check.terminationStatus == 0 else {
            print("note: python3 lacks pyzmq or lz4 (pip install pyzmq lz4); skipping the reference agent")
            return nil
        }
        let dir = NSTemporaryDirectory() + "slimsplit-demo-\(getpid())"
        mkdirs(dir)
        try serverKeys.write(name: "server", directory: dir)
        try keys.write(name: "ref-1", directory: dir)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [
            "python3", script, "--endpoint", endpoint, "--agent-id", "ref-1", "--server-key", "\(dir)/server.pub",
            "--key", "\(dir)/ref-1", "--frames", "\(frames)", "--interval", "\(interval)", "--lz4", "--bits", "6",
            "--timeout", "10",
        ]
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        return p
    }
}
