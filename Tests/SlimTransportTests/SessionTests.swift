import CZeroMQ
import Foundation
import SlimAgent
import SlimServer
import SlimTransport
import SlimWire
import TestSupport
import Testing

@Suite("Sessions over real ZeroMQ sockets", .serialized)
struct SessionTests {
    @Test("an allowed agent completes a Curve session: welcome Control, every frame acked")
    func curveSession() async throws {
        let keys = try CurveKeyPair.generate()
        let server = try TestServer(allowed: ["car-1": keys])
        let agent = try TestAgent(id: "car-1", server: server, keys: keys)
        #expect(await agent.stream(20))
        #expect(await eventually(60) { agent.agent.stats.control != nil })
        let s = server.server.stats["car-1"]
        // Every frame the agent handed to the socket arrived and was acknowledged: 20, or more if
        // a loaded machine made the helper submit a fresh frame after waiting 2 s for an Ack (that
        // frame waits behind the one on the link and may be replaced by the next: never sent).
        #expect(agent.agent.stats.framesSubmitted >= 20)
        #expect(
            await eventually(60) {
                let sent = agent.agent.ledger.counts.sent
                return sent >= 20 && server.server.stats["car-1"]?.frames == sent
                    && agent.agent.stats.rttNs.count == sent && agent.agent.ledger.unacked == 0
            },
            "\(agent.agent.ledger.counts) \(agent.agent.stats.framesReplaced) replaced, server \(server.server.stats["car-1"]?.frames ?? 0)"
        )
        #expect(s?.keyName == "car-1")
        #expect(s?.rejectedTotal == 0)
        await agent.stop()
        await server.stop()
    }

    @Test("frames over IPC with Curve off")
    func ipcPlain() async throws {
        let file = "\(NSTemporaryDirectory())slimsplit-test-\(getpid()).sock"
        defer { unlink(file) }
        let path = "ipc://\(file)"
        let server = try TestServer(allowed: [:], curve: false, endpoint: path)
        let agent = try TestAgent(id: "a-1", server: server, keys: nil, curve: false)
        #expect(await agent.stream(5), "\(server.server.stats) \(server.router.counters) \(agent.agent.stats)")
        #expect(await eventually(60) { server.server.stats["a-1"]?.frames == agent.agent.stats.framesSubmitted })
        await agent.stop()
        await server.stop()
    }

    @Test("newest frame wins while the link is down: older unsent frames are replaced and counted")
    func newestWins() async throws {
        // Nothing listens here: with ZMQ_IMMEDIATE nothing is queued, so frames wait in the slot.
        let agent = try FeatureAgent(
            identity: AgentIdentity(agentID: "a", modelID: "m"), server: "tcp://127.0.0.1:1", curve: nil,
            maxFrameBytes: 1 << 16, logger: testLogger)
        let dealer = agent.endpoint
        // The first frame waits in the socket's slot (on the link, as far as the agent knows), the
        // newest waits for its Ack, and the three in between were replaced.
        for _ in 0..<5 {
            TestAgent.dense.withUnsafeBufferPointer { _ = agent.submit(TestAgent.header, dense: $0, mask: nil) }
        }
        #expect(await eventually(60) { agent.stats.framesReplaced == 3 })
        #expect(agent.stats.framesNoBuffer == 0)  // replaced frames gave their buffers back
        dealer.close()
    }

    @Test("the agent says Hello again after the server restarts, and resumes")
    func serverRestart() async throws {
        let keys = try CurveKeyPair.generate()
        let serverKeys = try CurveKeyPair.generate()
        let first = try TestServer(allowed: ["car-1": keys], keys: serverKeys)
        let endpoint = first.router.endpoint
        let agent = try TestAgent(id: "car-1", server: first, keys: keys)
        #expect(await agent.stream(3))
        await first.stop()
        let second = try TestServer(allowed: ["car-1": keys], endpoint: endpoint, keys: serverKeys)
        #expect(await agent.stream(3), "\(second.server.stats) \(second.router.counters) \(agent.agent.stats)")
        #expect((second.server.stats["car-1"]?.frames ?? 0) >= 3)
        #expect(second.server.rejections[.helloRequired] == nil)
        #expect(agent.agent.stats.connects >= 2)
        await agent.stop()
        await second.stop()
    }

    static let referencePeer = pythonImportsNow("zmq, lz4")

    @Test(
        "the Python reference agent (Protocol/reference) completes a session of maps and boxes with the Swift server, Curve on",
        .enabled(if: referencePeer, "python3 with pyzmq and lz4 is not available (scripts/test installs them)"))
    func pythonReferenceAgent() async throws {
        let keys = try CurveKeyPair.generate()
        let server = try TestServer(allowed: ["ref-1": keys])
        let dir = NSTemporaryDirectory() + "slimsplit-ref-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try server.keys.write(name: "server", directory: dir)
        try keys.write(name: "ref-1", directory: dir)
        // Polled, not waited for: a blocked pool thread would starve the server under test.
        let r = await runProcess(
            [
                "python3", "Protocol/reference/agent.py", "--endpoint", server.router.endpoint, "--agent-id", "ref-1",
                "--server-key", "\(dir)/server.pub", "--key", "\(dir)/ref-1", "--frames", "12", "--interval", "0.02",
                "--lz4", "--mask", "--bits", "3", "--payload", "mixed", "--timeout", "15", "--json",
            ], directory: repoRoot)
        #expect(r?.status == 0, "reference agent: \(r?.output ?? "did not finish")")
        // Maps and Boxes (§4.7) in turn: every one accepted and acknowledged.
        let s = server.server.stats["ref-1"]
        #expect(s?.frames == 12)
        #expect(s?.boxesMessages == 6)
        #expect(s?.bits == 3)
        #expect(s?.keyName == "ref-1")
        #expect(server.server.rejections.isEmpty)
        await server.stop()
    }
}

@Suite("Publishing fused detections")
struct PublisherTests {
    @Test("a SUB client receives what the PUB endpoint publishes")
    func pubSub() async throws {
        let pub = try PublisherEndpoint(bind: "tcp://127.0.0.1:0")
        let ctx = zmq_ctx_new()!
        let sub = zmq_socket(ctx, ZMQ_SUB)!
        zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0)
        zmq_connect(sub, pub.endpoint)
        var got: [UInt8]?
        // PUB drops messages until the subscription arrives (the "slow joiner"): publish until one lands.
        let deadline = SystemClock.monotonicNs() + 20_000_000_000
        while got == nil, SystemClock.monotonicNs() < deadline {
            pub.publish(Array("{\"agent\":\"car-1\"}".utf8))
            var item = zmq_pollitem_t(socket: sub, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
            if zmq_poll(&item, 1, 20) > 0 {
                var msg = zmq_msg_t()
                zmq_msg_init(&msg)
                zmq_msg_recv(&msg, sub, 0)
                got = Array(UnsafeRawBufferPointer(start: zmq_msg_data(&msg), count: zmq_msg_size(&msg)))
                zmq_msg_close(&msg)
            }
        }
        #expect(got.map { String(decoding: $0, as: UTF8.self) } == "{\"agent\":\"car-1\"}")
        var zero: Int32 = 0
        zmq_setsockopt(sub, ZMQ_LINGER, &zero, 4)
        zmq_close(sub)
        zmq_ctx_term(ctx)
        pub.close()
    }
}
