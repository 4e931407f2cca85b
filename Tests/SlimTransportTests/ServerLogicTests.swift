import Logging
import SlimAgent
import SlimServer
import SlimTransport
import SlimWire
import Testing

/// `FeatureServer`'s rules over the in-memory transport. Every step waits for an event (a reply,
/// or another peer's reply as a barrier: the server handles events in order), never for the
/// clock, so these tests say the same on a loaded 2-core machine as on an idle one.
@Suite("Server logic over the in-memory transport, driven by events")
struct ServerLogicTests {
    final class Harness: Sendable {
        let router: InMemoryRouter
        let server: FeatureServer
        let task: Task<Void, Never>

        init(sendHWM: Int = 64, options: ServerOptions = ServerOptions()) {
            router = InMemoryRouter(sendHWM: sendHWM)
            server = FeatureServer(endpoint: router, options: options, logger: testLogger)
            let s = server
            task = Task { await s.run() }
        }

        /// Returns once the server has handled every message sent before it.
        func barrier() async {
            let p = router.connect()
            p.send(Hello(agentID: "barrier", modelID: "test").encoded())
            _ = await p.receive()
            p.disconnect()
        }

        func stop() async {
            router.close()
            await task.value
        }
    }

    static func hello(_ id: String) -> [UInt8] { Hello(agentID: id, modelID: "test").encoded() }

    /// The next message from the server, decoded.
    static func next(_ peer: InMemoryPeer) async throws -> Message {
        let bytes = try #require(await peer.receive())
        return try Message.decode(bytes)
    }

    static func ackSequence(_ m: Message) -> UInt64? {
        if case .ack(let a) = m { return a.sequence }
        return nil
    }

    @Test("Hello gets a Control; each frame an Ack with its sequence, in order")
    func helloAndAcks() async throws {
        let h = Harness()
        let car = h.router.connect()
        car.send(Self.hello("car-1"))
        guard case .control(let c) = try await Self.next(car) else {
            Issue.record("no Control")
            return
        }
        #expect(c.epoch >= 1 && c.reason == 0)
        for s in 1...3 { car.send(frameBytes(agent: "car-1", sequence: UInt64(s))) }
        var acked: [UInt64] = []
        for _ in 1...3 { acked.append(try #require(Self.ackSequence(try await Self.next(car)))) }
        #expect(acked == [1, 2, 3])
        #expect(h.server.stats["car-1"]?.frames == 3)
        await h.stop()
    }

    @Test("session rules: no Hello, another agent's id, a replayed sequence: rejected, counted, never acknowledged")
    func sessionRules() async throws {
        let h = Harness()
        let car = h.router.connect()
        car.send(frameBytes(agent: "car-1", sequence: 1))  // before Hello
        car.send(Self.hello("car-1"))
        car.send(frameBytes(agent: "car-1", sequence: 5))
        car.send(frameBytes(agent: "car-1", sequence: 5))  // replayed
        car.send(frameBytes(agent: "car-2", sequence: 6))  // another agent's id
        car.send(frameBytes(agent: "car-1", sequence: 4))  // older
        car.send(frameBytes(agent: "car-1", sequence: 7))
        guard case .control = try await Self.next(car) else {
            Issue.record("no Control")
            return
        }
        // Only the two valid frames are acknowledged, in order, and nothing comes between.
        #expect(Self.ackSequence(try await Self.next(car)) == 5)
        #expect(Self.ackSequence(try await Self.next(car)) == 7)
        let r = try #require(h.server.stats["car-1"]).rejected
        #expect(r == [.helloRequired: 1, .staleSequence: 2, .agentMismatch: 1])
        await h.stop()
    }

    @Test("with an authenticated name, a Hello under another name opens no session")
    func identity() async throws {
        let h = Harness()
        let impostor = h.router.connect(name: "car-1")
        impostor.send(Self.hello("car-2"))
        impostor.send(frameBytes(agent: "car-2", sequence: 1))
        await h.barrier()
        #expect(h.server.stats["car-1"]?.rejected == [.identityMismatch: 1, .helloRequired: 1])
        #expect(h.server.stats["car-1"]?.frames == 0)
        await h.stop()
    }

    @Test("a slow reader: Acks wait (never dropped), Results are shed, and past the bound frames are refused")
    func slowReader() async throws {
        var options = ServerOptions()
        options.ackBacklog = 5
        let h = Harness(sendHWM: 2, options: options)
        let car = h.router.connect()
        car.send(Self.hello("car-1"))
        for s in 1...20 { car.send(frameBytes(agent: "car-1", sequence: UInt64(s))) }
        await h.barrier()
        // The queue holds the Control and Ack 1; Acks 2–6 are held; frames 7–20 are refused.
        var st = try #require(h.server.stats["car-1"])
        #expect(st.frames == 6)
        #expect(st.backlog == 5)
        #expect(st.rejected == [.ackBacklog: 14])
        let result = ResultMessage(sequence: 6, captureTimeNs: 1, fusionTimeNs: 2, detections: [])
        #expect(h.server.send(result, toAgent: "car-1"))
        #expect(h.server.stats["car-1"]?.dropped == ["send_queue_full": 1])
        // Reading releases the held Acks, in order.
        guard case .control = try await Self.next(car) else {
            Issue.record("no Control first")
            return
        }
        var acked: [UInt64] = []
        for _ in 1...6 { acked.append(try #require(Self.ackSequence(try await Self.next(car)))) }
        #expect(acked == Array(1...6))
        st = try #require(h.server.stats["car-1"])
        #expect(st.backlog == 0)
        // Caught up: frames are accepted again, and Results go through.
        car.send(frameBytes(agent: "car-1", sequence: 21))
        #expect(Self.ackSequence(try await Self.next(car)) == 21)
        #expect(h.server.send(result, toAgent: "car-1"))
        guard case .result(let r) = try await Self.next(car) else {
            Issue.record("no Result")
            return
        }
        #expect(r.sequence == 6)
        await h.stop()
    }

    @Test("messages held for an agent that leaves are dropped as unroutable, and counted")
    func departed() async throws {
        var options = ServerOptions()
        options.ackBacklog = 100
        let h = Harness(sendHWM: 1, options: options)
        let car = h.router.connect()
        car.send(Self.hello("car-1"))
        for s in 1...4 { car.send(frameBytes(agent: "car-1", sequence: UInt64(s))) }
        await h.barrier()
        #expect(h.server.stats["car-1"]?.backlog == 4)
        car.disconnect()
        #expect(h.server.stats["car-1"]?.dropped == ["unroutable": 4])
        #expect(h.server.stats["car-1"]?.backlog == 0)
        await h.stop()
    }
}

/// `FeatureAgent`'s link rules over the in-memory transport, with the test as the server: every
/// step waits for the agent's next message on the router, never for the clock.
@Suite("Agent logic over the in-memory transport, driven by events")
struct AgentLogicTests {
    /// The next message the agent sent, decoded.
    static func next(_ events: inout AsyncStream<TransportEvent>.Iterator) async throws -> (RoutingID, Message) {
        while let e = await events.next() {
            if case .message(let m) = e { return (m.routingID, try Message.decode(Array(m.message.bytes))) }
        }
        throw CancellationError()
    }

    static func sequence(_ m: Message) -> UInt64? {
        if case .featureFrame(let f) = m { return f.header.sequence }
        return nil
    }

    @Test(
        "Hello first; one frame on the link, the newest waiting replaces older ones; an Ack sends it; Control is kept")
    func oneFrameOnTheLink() async throws {
        let router = InMemoryRouter()
        var events = router.events.makeAsyncIterator()
        let identity = AgentIdentity(agentID: "car-1", modelID: "test")
        let agent = FeatureAgent(
            identity: identity, transport: router.connect(name: "car-1", greeting: identity.hello.encoded()),
            maxFrameBytes: 1 << 16, logger: testLogger)
        let run = Task { await agent.run() }
        let (route, hello) = try await Self.next(&events)
        guard case .hello(let h) = hello else {
            Issue.record("not a Hello first: \(hello)")
            return
        }
        #expect(h.agentID == "car-1")
        func submit() {
            TestAgent.dense.withUnsafeBufferPointer { _ = agent.submit(TestAgent.header, dense: $0, mask: nil) }
        }
        submit()  // 1: on the link
        #expect(Self.sequence(try await Self.next(&events).1) == 1)
        submit()  // 2: waits (1 is not acknowledged)
        submit()  // 3: replaces 2
        #expect(agent.stats.framesReplaced == 1)
        let control = Control(epoch: 7, maxWidthIndex: 1, maxBits: 4, maxRateHz: 0, reason: 1)
        router.send(to: route, length: control.encodedLength, delivery: .reliable) { control.encode(into: $0) }
        let ack = Ack(sequence: 1, receiveTimeNs: 0, bytesReceived: 100, queueDelayNs: 0)
        router.send(to: route, length: ack.encodedLength, delivery: .reliable) { ack.encode(into: $0) }
        // The Ack frees the link: the waiting frame goes, and it is 3.
        #expect(Self.sequence(try await Self.next(&events).1) == 3)
        // Messages are handled in order, so the Control came before that Ack.
        #expect(agent.control?.epoch == 7 && agent.control?.maxBits == 4)
        let s = agent.stats
        #expect(s.acks == 1 && s.rttNs.count == 1 && s.framesSubmitted == 3)
        #expect(agent.ledger.unacked == 1)  // 3 is on the link
        router.close()
        await run.value
    }
}
