import Foundation
import Logging
import SlimAgent
import SlimEngine
import SlimPerception
import SlimSensors
import SlimServer
import SlimTransport
import SlimWire
import Testing

@testable import SlimPipeline

/// The boxes rung (PROTOCOL.md §4.7) end to end: agents send their own detections over the real
/// sockets, the server merges them, and what comes back is what the offline merge gives.
@Suite("Late fusion: Boxes messages over ZeroMQ, merged by the server")
struct LateFusionTests {
    static let agents = ["car_1", "rsu_1"]

    /// Per frame and agent, the agent's own detections (OwnDetector, as the agents ran it) and pose.
    static func offline(frames n: Int) throws -> [[String: (boxes: [BEVBox], position: SIMD2<Float>, yaw: Float)]] {
        let rec = try RecordingFrames(path: samplePath)
        let frames = Array(
            rec.frames.filter { f in agents.allSatisfy { f.agents[$0]?.points.isEmpty == false } }.prefix(n))
        let own = try OwnDetector(modelFile: modelPath)
        let edge = try EdgeEncoder(modelFile: modelPath)
        return frames.map { f in
            var out: [String: (boxes: [BEVBox], position: SIMD2<Float>, yaw: Float)] = [:]
            for a in agents {
                let af = f.agents[a]!
                let pose = af.measuredPose ?? af.pose!
                let boxes = af.points.withUnsafeBufferPointer {
                    own.detect(edge, $0, sensorHeight: Float(af.pose!.position.z))
                }
                out[a] = (boxes, SIMD2(Float(pose.position.x), Float(pose.position.y)), Float(pose.yaw))
            }
            return out
        }
    }

    /// A lock-step session of car_1 and rsu_1 over the first `frames` frames of the sample.
    static func session(frames: Int, _ configure: (inout CooperativeSession.Config) -> Void) async throws
        -> CooperativeSession
    {
        var logger = Logger(label: "test")
        logger.logLevel = .error
        var config = CooperativeSession.Config(recording: samplePath, model: modelPath)
        config.agents = agents
        config.maxFrames = frames
        configure(&config)
        let session = CooperativeSession(config)
        try await session.run(logger: logger)
        #expect(session.rejected == 0)
        return session
    }

    /// Box lists equal up to the wire's float32 (the Result carries the same values).
    static func expectSame(_ online: [BEVBox]?, _ offline: [BEVBox], _ what: String) {
        guard let online else {
            Issue.record("no Result for \(what)")
            return
        }
        #expect(online.count == offline.count, "\(what): \(online.count) vs \(offline.count) boxes")
        for (x, y) in zip(online, offline) {
            #expect(
                abs(x.x - y.x) < 1e-3 && abs(x.y - y.y) < 1e-3 && abs(x.yaw - y.yaw) < 1e-4
                    && abs(x.score - y.score) < 1e-6, "\(what): \(x) vs \(y)")
        }
    }

    @Test(
        "every agent on the boxes rung: each gets everyone's boxes in its frame, merged by NMS or weighted means",
        arguments: [BoxMerge.nms, .weighted])
    func allBoxes(merge: BoxMerge) async throws {
        let session = try await Self.session(frames: 5) {
            $0.lateFusion = true
            $0.merge = merge
        }
        let expected = try Self.offline(frames: 5)
        var compared = 0, averaged = 0
        for (fi, per) in expected.enumerated() {
            for ego in Self.agents {
                let e = per[ego]!
                var merged: [BEVBox] = []
                for a in Self.agents {
                    let o = per[a]!
                    merged += o.boxes.map { $0.moved(from: o.position, o.yaw, to: e.position, e.yaw) }
                        .filter { abs($0.x) <= 32 && abs($0.y) <= 32 }
                }
                let nms = RotatedIoU.nms(merged, threshold: 0.1)
                let want = merge.merge(merged, nmsIoU: 0.1)
                Self.expectSame(session.reports[ego]!.detections[fi], want, "\(ego) frame \(fi)")
                compared += 1
                averaged += zip(want, nms).filter { $0 != $1 }.count
            }
        }
        #expect(compared == 10)
        // weighted means moved some boxes: the two rules were both exercised, not one twice
        #expect(merge == .nms || averaged > 0, "no box of 10 ego-frames was a mean of several views")
        let sent = expected.flatMap { $0.values.map(\.boxes.count) }.reduce(0, +)
        #expect(sent >= 10, "the agents' own detectors found \(sent) boxes in 5 frames")
        for a in Self.agents {
            let r = session.reports[a]!
            #expect(r.results == 5)
            // A box list is a few hundred bytes: 88 of header and 40 a box.
            #expect(r.bytes > 0 && r.bytes / r.frames < 1_398)
        }
    }

    @Test("conditions: the others one frame late are their previous boxes; pose noise is reproducible")
    func conditions() async throws {
        let late = try await Self.session(frames: 5) {
            $0.lateFusion = true
            $0.othersLatencyMs = 100
            $0.motionCompensation = false
        }
        let expected = try Self.offline(frames: 5)
        for fi in 0..<5 {
            for ego in Self.agents {
                let e = expected[fi][ego]!
                var merged = e.boxes.filter { abs($0.x) <= 32 && abs($0.y) <= 32 }
                if fi > 0 {  // frame 0: the others have no earlier message yet
                    for a in Self.agents where a != ego {
                        let o = expected[fi - 1][a]!
                        merged += o.boxes.map { $0.moved(from: o.position, o.yaw, to: e.position, e.yaw) }
                            .filter { abs($0.x) <= 32 && abs($0.y) <= 32 }
                    }
                }
                Self.expectSame(
                    late.reports[ego]!.detections[fi], RotatedIoU.nms(merged, threshold: 0.1), "\(ego) frame \(fi)")
            }
        }
        let noisy = try await Self.session(frames: 3) {
            $0.lateFusion = true
            $0.poseNoise = (0.4, 0.4)
        }
        let again = try await Self.session(frames: 3) {
            $0.lateFusion = true
            $0.poseNoise = (0.4, 0.4)
        }
        let clean = try await Self.session(frames: 3) { $0.lateFusion = true }
        var moved = 0
        for fi in 0..<3 {
            for ego in Self.agents {
                Self.expectSame(noisy.reports[ego]!.detections[fi], again.reports[ego]!.detections[fi]!, "\(ego) \(fi)")
                let a = noisy.reports[ego]!.detections[fi] ?? []
                let b = clean.reports[ego]!.detections[fi] ?? []
                if a.count != b.count || zip(a, b).contains(where: { abs($0.x - $1.x) > 1e-3 }) { moved += 1 }
            }
        }
        #expect(moved > 0, "pose noise changed no result")
    }

    /// The boxes rung (the shipped model's own detector), and deep-fusion maps (moved cells,
    /// geometry and merged boxes): what changes is nearer the ground truth.
    @Test(
        "motion compensation: what the others sent one frame late is moved nearer where their objects are",
        arguments: [(modelPath, true), (deepModelPath, false)])
    func motionCompensation(model: String, boxes: Bool) async throws {
        let n = 12
        func late(_ on: Bool) async throws -> CooperativeSession {
            try await Self.session(frames: n) {
                $0.model = model
                $0.lateFusion = boxes
                $0.othersLatencyMs = 100
                $0.motionCompensation = on
            }
        }
        let moved = try await late(true), stale = try await late(false)
        let rec = try RecordingFrames(path: samplePath)
        let frames = Array(
            rec.frames.filter { f in Self.agents.allSatisfy { f.agents[$0]?.points.isEmpty == false } }.prefix(n))
        // The distance of each box to the nearest ground-truth object (within 3 m) of its frame.
        func error(_ boxes: [BEVBox], _ ego: String, _ fi: Int) -> Float {
            let gt = frames[fi].groundTruth(for: ego)
            let truth = gt.boxes + gt.own
            var sum: Float = 0
            for b in boxes {
                let d = truth.map { (t: BEVBox) -> Float in
                    let (dx, dy) = (t.x - b.x, t.y - b.y)
                    return (dx * dx + dy * dy).squareRoot()
                }.min() ?? 9
                if d < 3 { sum += d }
            }
            return sum
        }
        // Over the boxes that differ between the two runs (the moved ones, and where they were).
        var changed = 0
        var errMoved: Float = 0, errStale: Float = 0
        for fi in 0..<n {
            for ego in Self.agents {
                let a = moved.reports[ego]!.detections[fi] ?? [], b = stale.reports[ego]!.detections[fi] ?? []
                if fi < 2 {
                    // No speed before the late agent's second message: no box moves (deep fusion
                    // merges the late boxes then, which it leaves out without their motion).
                    if boxes { #expect(a == b, "\(ego) frame \(fi)") }
                    continue
                }
                // Detections, not the low-score candidates a merge keeps.
                let onlyA = a.filter { $0.score >= 0.3 && !b.contains($0) }, onlyB = b.filter { $0.score >= 0.3 && !a.contains($0) }
                changed += onlyA.count
                errMoved += error(onlyA, ego, fi)
                errStale += error(onlyB, ego, fi)
            }
        }
        #expect(changed >= 10, "motion compensation changed \(changed) boxes of \(2 * (n - 2)) results")
        // Measured on the sample: 13.0 m against 36.4 m (boxes, 39 changed), 30.4 m against 37.0 m
        // (deep fusion, 144: most objects are the ego's own too, and its own features place them).
        #expect(errMoved < (boxes ? 0.6 : 0.9) * errStale, "the changed boxes' distance to their objects: \(errMoved) m moved, \(errStale) m stale")
    }

    @Test("a mixed group: the car's map is fused, the roadside unit's boxes merged into it")
    func mixed() async throws {
        let session = try await Self.session(frames: 4) { $0.boxAgents = ["rsu_1"] }
        let expected = try Self.offline(frames: 4)
        // The car's fused result offline: the detector on its map alone, then the unit's boxes.
        let rec = try RecordingFrames(path: samplePath)
        let frames = Array(
            rec.frames.filter { f in Self.agents.allSatisfy { f.agents[$0]?.points.isEmpty == false } }.prefix(4))
        let detector = try CooperativeDetector(Safetensors(contentsOf: modelPath))
        let edge = try EdgeEncoder(modelFile: modelPath)
        let feat = FloatTensor(height: 32, width: 32, channels: 64)
        for (fi, f) in frames.enumerated() {
            let af = f.agents["car_1"]!
            let shape = af.points.withUnsafeBufferPointer { edge.encode($0, sensorHeight: Float(af.pose!.position.z)) }
            edge.dequantized(
                into: feat, channels: shape.channels, height: shape.height, width: shape.width, masked: shape.masked)
            let car = expected[fi]["car_1"]!
            let rsu = expected[fi]["rsu_1"]!
            var merged = detector.detect(ego: 0, agents: [.init(features: feat, position: car.position, yaw: car.yaw)])
            merged += rsu.boxes.map { $0.moved(from: rsu.position, rsu.yaw, to: car.position, car.yaw) }
                .filter { abs($0.x) <= 32 && abs($0.y) <= 32 }
            Self.expectSame(
                session.reports["car_1"]!.detections[fi], RotatedIoU.nms(merged, threshold: 0.1), "car_1 frame \(fi)")
        }
        // The unit (boxes, no map of its own) still gets the car's map fused into its grid.
        #expect(session.reports["rsu_1"]!.results == 4)
        #expect(session.reports["rsu_1"]!.bytes / 4 < 1_398)
        #expect(session.reports["car_1"]!.bytes / 4 > 10_000)
    }
}

@Suite("The adapting agent falls to the boxes rung")
struct BoxesRungTests {
    @Test(
        "an agent whose link carries no map in time sends Boxes, and its Results still come back",
        arguments: [modelPath, deepModelPath])
    func agentFallsToBoxes(modelPath: String) async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .error
        let router = try RouterEndpoint(bind: "tcp://127.0.0.1:0", curve: nil, logger: logger)
        let fusion = try FusionService(modelFile: modelPath)
        let server = FusionServer(endpoint: router, fusion: fusion, drainMs: 0, logger: logger)
        let serverTask = Task { await server.run() }
        let results = Locked<[UInt64]>([])
        let edge = try EdgeEncoder(modelFile: modelPath)
        let agent = try FeatureAgent(
            identity: AgentIdentity(
                agentID: "car-1", modelID: edge.modelID,
                widths: edge.model.architecture.widths.map { UInt16(($0 * 1000).rounded()) }, bitsMask: edge.bitsMask),
            server: router.endpoint, curve: nil, maxFrameBytes: 1 << 20, logger: logger
        ) { r in results.withLock { $0.append(r.sequence) } }
        let links = Roaming(home: agent, logger: logger, connect: nil)
        let linkTask = Task { await links.run() }
        // A 2 ms deadline: even the cheapest map (2.7 kB; the deep-fusion model's 0.65 kB) does not
        // fit what is left of it once the encoder's milliseconds are counted, whatever the link. The
        // controller's rule is the same one a slow link trips (bytes ÷ goodput over the budget);
        // Benchmarks/shaped_link.sh shows it on a shaped link.
        let source = AgentConfig.RecordingSource(
            recording: samplePath, agent: "car_1", model: modelPath, widthIndex: nil, bits: 8, threshold: 0,
            loop: false, adaptDeadline: 0.002)
        let loop = try EdgeAgent(links: links, edge: edge, source: source, stages: AgentStageTimes(), logger: logger)
        // The first frames go before any Ack (no goodput yet): maps. Then boxes. Replayed in
        // short runs until four Boxes went in (no clock in the test's logic: a loaded machine
        // only takes longer).
        var boxes: Int { server.server.stats["car-1"]?.boxesMessages ?? 0 }
        let giveUp = SystemClock.monotonicNs() + 60_000_000_000
        while boxes < 4, SystemClock.monotonicNs() < giveUp {
            try await loop.replay(frames: 3, stop: Locked(false), report: nil)
        }
        #expect(loop.sendsBoxes)
        // The last message was Boxes: its Result comes back (the newest message is always fused).
        let last = agent.lastSequence
        while !results.value.contains(last), SystemClock.monotonicNs() < giveUp {
            try await Task.sleep(nanoseconds: 10_000_000)
        }
        #expect(results.value.contains(last), "no Result for the Boxes message \(last): \(results.value)")
        let stats = try #require(server.server.stats["car-1"])
        #expect(stats.boxesMessages >= 4, "\(stats.boxesMessages) of \(stats.frames) messages were Boxes")
        #expect(stats.rejectedTotal == 0)
        #expect(fusion.boxesTaken == stats.boxesMessages)
        #expect(
            prometheusText(server: server.server, fusion: fusion).contains(
                "slimsplit_boxes_messages_total{agent=\"car-1\"} \(stats.boxesMessages)"))
        agent.endpoint.close()
        server.shutdown()
        await serverTask.value
        await linkTask.value
    }
}

@Suite("AP of a subset of the ground truth")
struct SubsetAPTests {
    @Test("detections of other ground truth are left out; unmatched ones count where asked")
    func subset() {
        let near = BEVBox(x: 5, y: 0, length: 4, width: 2, yaw: 0)
        let far = BEVBox(x: 25, y: 0, length: 4, width: 2, yaw: 0)
        var hitNear = near
        hitNear.score = 0.9
        var hitFar = far
        hitFar.score = 0.95
        var ghost = BEVBox(x: 10, y: 10, length: 4, width: 2, yaw: 0)
        ghost.score = 0.99
        // Only `near` counts: the detection of `far` is left out, so one TP out of one: 100.
        var ap = AveragePrecision()
        ap.add(
            detections: [hitFar, hitNear], groundTruth: [near, far], counted: [true, false],
            unmatchedCounts: { _ in true })
        #expect(ap.groundTruth == 1)
        #expect(abs(ap.percent[1] - 100) < 1e-3)
        // An unmatched detection above it that counts halves the precision at full recall: 50.
        ap = AveragePrecision()
        ap.add(
            detections: [ghost, hitFar, hitNear], groundTruth: [near, far], counted: [true, false],
            unmatchedCounts: { _ in true })
        #expect(abs(ap.percent[1] - 50) < 1e-3)
        // The same ghost outside the bin (unmatchedCounts false) is left out: 100 again.
        ap = AveragePrecision()
        ap.add(
            detections: [ghost, hitFar, hitNear], groundTruth: [near, far], counted: [true, false],
            unmatchedCounts: { _ in false })
        #expect(abs(ap.percent[1] - 100) < 1e-3)
    }
}
