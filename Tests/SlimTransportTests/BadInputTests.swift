import Foundation
import Logging
import SlimServer
import SlimTransport
import SlimWire
import Testing

@Suite("Bad input: rejected, counted per agent and reason, and the healthy agent keeps flowing", .serialized)
struct BadInputTests {
    /// Every invalid vector, every session-level violation, an over-limit message, an oversized
    /// one and a multi-part one, sent by one authenticated client while a healthy agent streams.
    @Test func everyRejectionWhileHealthyAgentFlows() async throws {
        let healthyKeys = try CurveKeyPair.generate()
        let badKeys = try CurveKeyPair.generate()
        var options = ServerOptions()
        options.limits.maxMessageBytes = 64 << 10
        var socket = SocketOptions()
        socket.maxMessageBytes = 128 << 10
        let server = try TestServer(
            allowed: ["car-1": healthyKeys, "bad-1": badKeys], options: options, socket: socket)
        let healthy = try TestAgent(id: "car-1", server: server, keys: healthyKeys)
        let stop = Locked(false)
        let streaming = Task {
            var ok = true
            while !stop.value && ok { ok = await healthy.stream(1) }
            return ok
        }

        let bad = RawClient(endpoint: server.router.endpoint, serverKey: server.keys.publicKey, keys: badKeys)
        var expected: [RejectReason: Int] = [:]
        // 1. A frame before any Hello.
        bad.send(frameBytes(agent: "bad-1", sequence: 1))
        expected[.helloRequired, default: 0] += 1
        bad.send(Hello(agentID: "bad-1", modelID: "test").encoded())
        #expect(bad.receive(timeoutMs: 20_000).map { try? Control.decode($0) } != nil, "no welcome Control")
        // 2. Every invalid vector. The server never parses the body of a kind it does not accept.
        let dir = repoRoot.appendingPathComponent("Protocol/vectors/invalid")
        for file in try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() where file.hasSuffix(".json")
        {
            let name = String(file.dropLast(5))
            let bytes = try vectorBytes("invalid", name)
            let json =
                try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent(file)))
                as! [String: Any]
            var reason = RejectReason(rawValue: json["error"] as! String)!
            if let env = try? bytes.withUnsafeBytes({ try Envelope.open($0, limits: options.limits) }),
                [.ack, .result, .control, .handover].contains(env.kind)
            {
                reason = .unexpectedKind
            }
            expected[reason, default: 0] += 1
            bad.send(bytes)
        }
        // 3. Session rules.
        bad.send(frameBytes(agent: "someone-else", sequence: 10))
        expected[.agentMismatch, default: 0] += 1
        bad.send(frameBytes(agent: "bad-1", sequence: 11))  // accepted
        bad.send(frameBytes(agent: "bad-1", sequence: 11))  // replayed
        expected[.staleSequence, default: 0] += 1
        bad.send(frameBytes(agent: "bad-1", sequence: 12, widthIndex: 9))
        expected[.fieldOutOfRange, default: 0] += 1
        bad.send(Ack(sequence: 1, receiveTimeNs: 1, bytesReceived: 1, queueDelayNs: 1).encoded())
        expected[.unexpectedKind, default: 0] += 1
        bad.send([1, 2, 3], more: true)
        bad.send([4, 5, 6])
        expected[.lengthMismatch, default: 0] += 1
        // 4. Over the protocol limit (64 KiB) but under the socket's: delivered, rejected unparsed.
        var bigHeader = TestAgent.header
        (bigHeader.agentID, bigHeader.sequence, bigHeader.codec, bigHeader.height, bigHeader.width, bigHeader.bits) = (
            "bad-1", 13, .none, 96, 96, 8
        )
        var big = [UInt8](repeating: 0, count: FeatureFrameEncoder.maxEncodedLength(bigHeader))
        let zeros = [UInt8](repeating: 0, count: 8 * 96 * 96)
        _ = zeros.withUnsafeBufferPointer { z in
            big.withUnsafeMutableBytes { FeatureFrameEncoder().encode(bigHeader, dense: z, mask: nil, into: $0) }
        }
        #expect(big.count > options.limits.maxMessageBytes && big.count < socket.maxMessageBytes)
        bad.send(big)
        expected[.overLimit, default: 0] += 1

        let total = expected.values.reduce(0, +)
        let arrived = await eventually(60) { (server.server.stats["bad-1"]?.rejectedTotal ?? 0) >= total }
        let got = server.server.stats["bad-1"]
        #expect(arrived)
        #expect(got?.rejected == expected)
        #expect(got?.frames == 1)

        // 5. A message over the socket limit: libzmq drops the connection before allocating it.
        let before = server.router.counters.received
        let acksBefore = healthy.agent.stats.acks
        let lostBefore = server.router.counters.sessionsLost
        bad.send([UInt8](repeating: 0, count: 1 << 20))
        #expect(
            await eventually(60) { server.router.counters.sessionsLost == lostBefore + 1 },
            "the dropped connection was not counted")
        #expect(await eventually(60) { healthy.agent.stats.acks >= acksBefore + 5 })
        // The healthy agent's frames keep arriving (the oversized message never does).
        #expect(await eventually(60) { server.router.counters.received - before >= 5 })
        #expect(server.server.stats["bad-1"]?.rejected == expected)

        stop.withLock { $0 = true }
        #expect(await streaming.value, "the healthy agent's frames stopped being acknowledged")
        // Every frame the healthy agent sent arrived and was acknowledged (a frame still waiting
        // in the newest-wins slot when the test helper sent a fresh one is counted as replaced).
        let accounted = await eventually(60) {
            let h = healthy.agent.stats
            let frames = server.server.stats["car-1"]?.frames ?? -1
            return frames + h.framesReplaced == h.framesSubmitted && h.acks == frames
        }
        #expect(accounted, "\(healthy.agent.stats) vs \(String(describing: server.server.stats["car-1"]))")
        #expect(server.server.stats["car-1"]?.rejectedTotal == 0)
        #expect(healthy.agent.stats.framesSubmitted > 5)
        await healthy.stop()
        await server.stop()
    }

    @Test("an agent whose Curve key is not allowed gets nothing through; the ZAP handler counts it")
    func unknownKey() async throws {
        let goodKeys = try CurveKeyPair.generate()
        let strangerKeys = try CurveKeyPair.generate()
        let server = try TestServer(allowed: ["car-1": goodKeys])
        let good = try TestAgent(id: "car-1", server: server, keys: goodKeys)
        let stranger = RawClient(endpoint: server.router.endpoint, serverKey: server.keys.publicKey, keys: strangerKeys)
        stranger.send(Hello(agentID: "intruder", modelID: "test").encoded())
        for s in 1...5 { stranger.send(frameBytes(agent: "intruder", sequence: UInt64(s))) }
        #expect(await good.stream(10))
        #expect(await eventually(60) { (server.router.unauthenticated[strangerKeys.publicKey.z85] ?? 0) >= 1 })
        #expect(stranger.receive(timeoutMs: 300) == nil)
        #expect(server.server.stats["intruder"] == nil)
        #expect(await eventually(60) { server.server.stats["car-1"]?.frames == good.agent.stats.framesSubmitted })
        #expect((server.server.rejections[.unauthenticated] ?? 0) >= 1)
        // A client that does not even speak Curve gets nothing through either, nor one that has
        // the wrong server key; both handshakes are counted by kind (and the refused key as auth).
        let plain = RawClient(endpoint: server.router.endpoint, serverKey: nil, keys: nil)
        plain.send(Hello(agentID: "plain", modelID: "test").encoded())
        #expect(plain.receive(timeoutMs: 300) == nil)
        #expect(server.server.stats["plain"] == nil)
        let wrongServer = RawClient(
            endpoint: server.router.endpoint, serverKey: try CurveKeyPair.generate().publicKey, keys: goodKeys)
        wrongServer.send(Hello(agentID: "car-1", modelID: "test").encoded())
        #expect(wrongServer.receive(timeoutMs: 300) == nil)
        #expect(
            await eventually(60) {
                let f = server.router.counters.handshakeFailures
                return (f["no_detail"] ?? 0) + (f["protocol"] ?? 0) >= 2 && (f["auth"] ?? 0) >= 1
            }, "\(server.router.counters.handshakeFailures)")
        await good.stop()
        await server.stop()
    }

    @Test("an allowed key speaks only under its own name: a Hello as another agent opens no session")
    func impostor() async throws {
        let carKeys = try CurveKeyPair.generate()
        let otherKeys = try CurveKeyPair.generate()
        let server = try TestServer(allowed: ["car-1": carKeys, "car-2": otherKeys])
        let car = try TestAgent(id: "car-1", server: server, keys: carKeys)
        let impostor = RawClient(endpoint: server.router.endpoint, serverKey: server.keys.publicKey, keys: otherKeys)
        impostor.send(Hello(agentID: "car-1", modelID: "test").encoded())
        for s in 1...5 { impostor.send(frameBytes(agent: "car-1", sequence: UInt64(100 + s))) }
        #expect(await car.stream(10))
        #expect(await eventually(60) { (server.server.rejections[.identityMismatch] ?? 0) >= 1 })
        #expect(impostor.receive(timeoutMs: 300) == nil, "the impostor got a Control")
        #expect(await eventually(60) { (server.server.rejections[.helloRequired] ?? 0) >= 5 })
        // Only the real car-1's frames count as car-1's, and all of them were acknowledged.
        #expect(
            await eventually(60) {
                server.server.stats["car-1"]?.frames == car.agent.stats.framesSubmitted
                    && car.agent.stats.acks == car.agent.stats.framesSubmitted
            })
        #expect(server.server.stats["car-1"]?.keyName == "car-1")
        await car.stop()
        await server.stop()
    }

    @Test("rejections are logged once per interval per agent and reason, not once per message")
    func rateLimitedLog() {
        let log = RateLimitedLog(logger: Logger(label: "test"), interval: 3600)
        var written = 0
        for _ in 0..<1000 where log.warning(key: "bad-1:crc_mismatch", "rejected") { written += 1 }
        #expect(written == 1)
        #expect(log.warning(key: "bad-1:truncated", "rejected"))
        #expect(log.warning(key: "bad-2:crc_mismatch", "rejected"))
    }
}

@Suite("Messages the server drops are counted per agent and reason")
struct SendDropTests {
    @Test("Results to an agent that never reads overflow its queue: counted as send_queue_full, and in /metrics")
    func slowReader() async throws {
        let keys = try CurveKeyPair.generate()
        var socket = SocketOptions()
        socket.sendHWM = 2
        let server = try TestServer(allowed: ["car-1": keys], socket: socket)
        let client = RawClient(
            endpoint: server.router.endpoint, serverKey: server.keys.publicKey, keys: keys, receiveHWM: 1)
        client.send(Hello(agentID: "car-1", modelID: "test").encoded())
        var got: [UInt8] = []
        #expect(
            await eventually(60) {
                if let m = client.receive(timeoutMs: 20) { got.append(m[5]) }
                return got.contains(5)
            }, "no Control")
        // Big Results (4096 detections, ~180 KB each) to a client that stops reading.
        let det = Detection(classID: 0, score: 0.5, center: SIMD3(1, 2, 0), size: SIMD3(4, 2, 1.5), yaw: 0)
        let result = ResultMessage(
            sequence: 1, captureTimeNs: 1, fusionTimeNs: 2, detections: [Detection](repeating: det, count: 4096))
        for _ in 0..<400 { server.server.send(result, toAgent: "car-1") }
        #expect(await eventually(60) { (server.server.stats["car-1"]?.dropped["send_queue_full"] ?? 0) > 0 })
        // The router counts a drop before the server's per-agent stats see it: while the 400 sends
        // drain (a loaded machine) the two may differ for a moment, so wait for them to agree.
        #expect(
            await eventually(60) {
                server.router.counters.sendQueueFull == server.server.stats["car-1"]?.dropped["send_queue_full"]
            }, "router \(server.router.counters.sendQueueFull) vs agent stats \(server.server.stats["car-1"]?.dropped ?? [:])")
        #expect(
            prometheusText(server: server.server, fusion: nil).contains(
                "slimsplit_send_dropped_total{agent=\"car-1\",reason=\"send_queue_full\"}"))
        await server.stop()
    }

    @Test("Acks and Controls are never dropped: an agent that stops reading while Results fill its queue gets every one once it reads")
    func acksWaitForASlowReader() async throws {
        let keys = try CurveKeyPair.generate()
        var socket = SocketOptions()
        socket.sendHWM = 2
        var options = ServerOptions()
        options.ackBacklog = 40
        let server = try TestServer(allowed: ["car-1": keys], options: options, socket: socket)
        let client = RawClient(
            endpoint: server.router.endpoint, serverKey: server.keys.publicKey, keys: keys, receiveHWM: 1)
        client.send(Hello(agentID: "car-1", modelID: "test").encoded())
        #expect(await eventually(60) { client.receive(timeoutMs: 20).map { $0[5] } == 5 }, "no Control")
        // Fill every buffer between server and client with big Results, which are best effort.
        let det = Detection(classID: 0, score: 0.5, center: SIMD3(1, 2, 0), size: SIMD3(4, 2, 1.5), yaw: 0)
        let result = ResultMessage(
            sequence: 1, captureTimeNs: 1, fusionTimeNs: 2, detections: [Detection](repeating: det, count: 4096))
        for _ in 0..<400 { server.server.send(result, toAgent: "car-1") }
        #expect(await eventually(60) { (server.server.stats["car-1"]?.dropped["send_queue_full"] ?? 0) > 0 })
        // Hellos, then frames, from the client, which reads nothing meanwhile.
        let hellos = 30
        let frames = 150
        for _ in 0..<hellos { client.send(Hello(agentID: "car-1", modelID: "test").encoded()) }
        for i in 1...frames { client.send(frameBytes(agent: "car-1", sequence: UInt64(i))) }
        let handled = { (s: AgentStats?) in (s?.hellos ?? 0) + (s?.frames ?? 0) + (s?.rejectedTotal ?? 0) }
        #expect(await eventually(60) { handled(server.server.stats["car-1"]) == 1 + hellos + frames })
        let before = try #require(server.server.stats["car-1"])
        // How many Acks wait depends on how much the kernel's socket buffers took (the in-memory
        // test, ServerLogicTests.slowReader, pins the exact numbers); refusals can only be ack_backlog.
        #expect(before.rejected.keys.allSatisfy { $0 == .ackBacklog }, "\(before.rejected)")
        #expect(before.hellos > 1 && before.frames > 0, "\(before.hellos) Hellos, \(before.frames) frames accepted")
        // Now read everything: one Control per accepted Hello and one Ack per accepted frame.
        var acks = 0
        var controls = 0
        #expect(
            await eventually(120) {
                while let m = client.receive(timeoutMs: 5) {
                    if m[5] == 3 { acks += 1 }
                    if m[5] == 5 { controls += 1 }
                }
                return acks == before.frames && controls == before.hellos - 1
            }, "acks \(acks) of \(before.frames), controls \(controls) of \(before.hellos - 1)")
        let after = try #require(server.server.stats["car-1"])
        #expect(after.backlog == 0)
        #expect(after.dropped["unroutable"] == nil)
        #expect(prometheusText(server: server.server, fusion: nil).contains("slimsplit_send_backlog{agent=\"car-1\"} 0"))
        await server.stop()
    }
}
