import Dispatch
import Foundation
import SlimCore
import SlimTransport
import SlimWire
import Testing

@testable import SlimPerception
@testable import SlimServer

/// Fusion runs off the receive path: while a pass fuses, frames are still taken in (and so
/// acknowledged), into the other buffer of each agent's slot.
@Suite("Fusion service: ingest does not wait for a fusion pass")
struct FusionServiceTests {
    static let model = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
        .appendingPathComponent("Models/slimsplit-bev.safetensors").path

    /// A full-width 8-bit frame of `agent` (inline quantization), encoded and decoded as the server
    /// does: `channels` channels, with `halfSent` every other cell (a checkerboard moving with the
    /// sequence) in its mask, else every cell.
    static func ingest(
        _ fusion: FusionService, agent: String, sequence: UInt64, x: Double, channels c: Int = 64, halfSent: Bool = false
    ) throws -> Bool {
        let (h, w) = (32, 32)
        var header = FeatureFrameHeader(
            agentID: agent, sequence: sequence, captureTimeNs: 1_000_000_000 + sequence * 100_000_000, modelID: "m",
            widthIndex: 3, bits: 8, channels: c, height: h, width: w,
            quant: .inline(scales: .init(repeating: 0.02, count: c), zeroPoints: .init(repeating: 0, count: c)),
            masked: halfSent, codec: .none)
        header.position = SIMD3(x, 0, 0)
        header.orientation = SIMD4(0, 0, 0, 1)
        var mask = [UInt8](repeating: 0, count: h * w / 8)
        for cell in 0..<(h * w) where (cell / w + cell % w + Int(sequence)) % 2 == 0 { mask[cell / 8] |= 1 << (cell % 8) }
        let dense = (0..<(c * h * w)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(sequence)) }
        var out = [UInt8](repeating: 0, count: FeatureFrameEncoder.maxEncodedLength(header))
        let (length, _) = dense.withUnsafeBufferPointer { d in
            mask.withUnsafeBytes { m in
                out.withUnsafeMutableBytes { FeatureFrameEncoder().encode(header, dense: d, mask: halfSent ? m : nil, into: $0) }
            }
        }
        return try out.withUnsafeBytes { b in
            let decoded = try FeatureFrameDecoder().decode(
                try Envelope.open(UnsafeRawBufferPointer(rebasing: b[0..<length])), messageLength: length)
            return fusion.ingest(agent: agent, decoded)
        }
    }

    // Async, waiting by polling: a test that blocked in a semaphore would hold one of the few
    // threads of the concurrency pool that the other suites' sockets run on.
    @Test func ingestDuringFusion() async throws {
        let fusion = try FusionService(modelFile: Self.model)
        #expect(try Self.ingest(fusion, agent: "a", sequence: 1, x: 0))
        #expect(try Self.ingest(fusion, agent: "b", sequence: 1, x: 10))
        let fusing = LockedBox(false)
        let ingested = LockedBox(false)
        let tickDone = LockedBox(false)
        let release = DispatchSemaphore(value: 0)
        fusion.beforeFusing = {
            fusing.set(true)
            release.wait()
        }  // holds the pass's own thread
        let outputs = LockedBox<[FusionService.Output]>([])
        Thread {
            outputs.set(fusion.tick())
            tickDone.set(true)
        }.start()
        // The pass holds here, between gathering and fusing; frames must still go in.
        #expect(await eventually(120) { fusing.get() })
        Thread {
            for s in UInt64(2)...4 { _ = try? Self.ingest(fusion, agent: "a", sequence: s, x: 1) }
            ingested.set(true)
        }.start()
        let inWhileFusing = await eventually(60) { ingested.get() }
        fusion.beforeFusing = nil
        release.signal()
        #expect(await eventually(300) { tickDone.get() })
        #expect(inWhileFusing, "ingest waited for the fusion pass")
        // The pass fused what it gathered (sequence 1 of both agents) …
        #expect(outputs.get().map(\.agent).sorted() == ["a", "b"])
        #expect(outputs.get().allSatisfy { $0.sequence == 1 })
        // … and the frame that came in meanwhile is fused next, with its own pose.
        let next = fusion.tick()
        #expect(next.map(\.agent) == ["a"] && next.first?.sequence == 4 && next.first?.position.x == 1)
    }

    /// A pass spread over a pool of niced threads (`fusion.threads`) fuses exactly what one thread
    /// fuses: each worker has its own detector, and the Results come back per agent.
    @Test func passOverThreadPool() async throws {
        func run(threads: Int) async throws -> [String: [BEVBox]] {
            var o = FusionService.Options()
            o.threads = threads
            let fusion = try FusionService(modelFile: Self.model, options: o)
            for (k, a) in ["a", "b", "c", "d", "e"].enumerated() {
                #expect(try Self.ingest(fusion, agent: a, sequence: 1, x: Double(k) * 6))
            }
            let pool = FusionThread(nice: 10, threads: threads)
            defer { pool.stop() }
            let outs = await pool.run { fusion.tick(parallel: pool.parallel) }
            return Dictionary(uniqueKeysWithValues: outs.map { ($0.agent, $0.boxes) })
        }
        let one = try await run(threads: 1)
        let three = try await run(threads: 3)
        #expect(one.count == 5)
        #expect(one.values.map(\.count).reduce(0, +) > 0, "the synthetic maps give detections to compare")
        #expect(one == three)
    }

    /// One fusion thread per CPU of the process's affinity mask: each thread runs on its own CPU
    /// only (its own mask, read on the thread); one thread fewer or more: none is pinned.
    @Test(.enabled(if: FusionThread.allowedCPUs().count >= 2, "needs 2 or more CPUs"))
    func poolThreadsPinnedOnePerCPU() async throws {
        let allowed = FusionThread.allowedCPUs()
        let pool = FusionThread(nice: 10, threads: allowed.count)
        defer { pool.stop() }
        #expect(pool.pinnedCPUs == allowed)
        // One iteration per thread, each held until all have started (a barrier, 10 s at most),
        // so that every thread of the pool runs exactly one of them.
        let seen = Locked<[[Int]]>([])
        await pool.run {
            pool.parallel(allowed.count) { _ in
                seen.withLock { $0.append(FusionThread.allowedCPUs()) }
                for _ in 0..<10_000 where seen.value.count < allowed.count { usleep(1_000) }
            }
        }
        #expect(seen.value.count == allowed.count)
        #expect(seen.value.allSatisfy { $0.count == 1 && allowed.contains($0[0]) })
        #expect(Set(seen.value.map { $0[0] }) == Set(allowed), "each thread on its own CPU")
        let fewer = FusionThread(nice: 10, threads: allowed.count - 1)
        defer { fewer.stop() }
        #expect(fewer.pinnedCPUs.isEmpty)
        let mask = await fewer.run { FusionThread.allowedCPUs() }
        #expect(mask == allowed)
        let more = FusionThread(nice: 10, threads: allowed.count + 1)
        defer { more.stop() }
        #expect(more.pinnedCPUs.isEmpty)
    }
}

@Suite("Frames that contradict the model are rejected before the Ack (model_mismatch)")
struct ModelMismatchTests {
    static func header(c: Int, h: Int, w: Int, widthIndex: UInt8 = 3, bits: UInt8 = 8, modelQuant: Bool = false)
        -> FeatureFrameHeader
    {
        FeatureFrameHeader(
            agentID: "car-1", sequence: 1, captureTimeNs: 1, modelID: "m", widthIndex: widthIndex, bits: bits,
            channels: c, height: h, width: w,
            quant: modelQuant
                ? .model : .inline(scales: .init(repeating: 0.1, count: c), zeroPoints: .init(repeating: 0, count: c)),
            codec: .none)
    }

    @Test func shapes() throws {
        let fusion = try FusionService(modelFile: FusionServiceTests.model)
        #expect(fusion.check(Self.header(c: 64, h: 32, w: 32)) == nil)
        #expect(fusion.check(Self.header(c: 16, h: 32, w: 32, widthIndex: 0, bits: 4, modelQuant: true)) == nil)
        for (c, h, w) in [(3, 5, 7), (1, 1, 1), (1024, 128, 128), (65, 32, 32)] {
            #expect(fusion.check(Self.header(c: c, h: h, w: w))?.reason == .modelMismatch, "\(c)×\(h)×\(w)")
        }
        // Model quantization for a width whose channel count the frame does not have.
        #expect(
            fusion.check(Self.header(c: 64, h: 32, w: 32, widthIndex: 0, bits: 4, modelQuant: true))?.reason
                == .modelMismatch)
    }

    @Test("over real sockets: a mismatched frame is counted and not acknowledged")
    func overSockets() async throws {
        let fusion = try FusionService(modelFile: FusionServiceTests.model)
        let keys = try CurveKeyPair.generate()
        let server = try TestServer(allowed: ["car-1": keys], check: { _, h in fusion.check(h) })
        let client = RawClient(endpoint: server.router.endpoint, serverKey: server.keys.publicKey, keys: keys)
        client.send(Hello(agentID: "car-1", modelID: "test").encoded())
        // The welcome Control, waited for in short polls (never blocking a pool thread for long).
        var kinds: [UInt8] = []
        #expect(
            await eventually(60) {
                if let m = client.receive(timeoutMs: 20) { kinds.append(m[5]) }
                return kinds.contains(5)
            }, "no Control")
        client.send(frameBytes(agent: "car-1", sequence: 1))  // 8×16×16: not the model's map
        #expect(await eventually(60) { (server.server.rejections[.modelMismatch] ?? 0) == 1 })
        while let m = client.receive(timeoutMs: 300) { kinds.append(m[5]) }
        #expect(!kinds.contains(3), "the mismatched frame was acknowledged")
        #expect(server.server.stats["car-1"]?.frames == 0)
        await server.stop()
    }
}

final class LockedBox<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: T
    init(_ v: T) { value = v }
    func set(_ v: T) {
        lock.lock()
        value = v
        lock.unlock()
    }
    func get() -> T {
        lock.lock()
        defer { lock.unlock() }
        return value
    }
}

/// Codebook frames (PROTOCOL.md §4.2, quant_mode 2) are checked against the model before the Ack:
/// a model without codebooks, or other levels or index bits than its codebook's, is a model mismatch.
@Suite("Fusion service: codebook frames must fit the model's codebook")
struct CodebookCheckTests {
    static let deep = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
        .appendingPathComponent("Models/slimsplit-deep.safetensors").path

    static func header(levels: Int, bits: UInt8, widthIndex: UInt8 = 3) -> FeatureFrameHeader {
        FeatureFrameHeader(
            agentID: "a", sequence: 1, captureTimeNs: 1, modelID: "m", widthIndex: widthIndex, bits: bits,
            channels: levels, height: 32, width: 32, quant: .codebook, masked: true, codec: .none)
    }

    @Test("the deep model takes 3 levels of 7-bit indices at full width, and nothing else")
    func check() throws {
        let fusion = try FusionService(modelFile: Self.deep)
        #expect(fusion.check(Self.header(levels: 3, bits: 7)) == nil)
        for h in [Self.header(levels: 4, bits: 7), Self.header(levels: 3, bits: 6), Self.header(levels: 3, bits: 7, widthIndex: 0)] {
            #expect(fusion.check(h)?.reason == .modelMismatch, "\(h.channels) levels, \(h.bits) bits, width \(h.widthIndex)")
        }
        let maps = try FusionService(modelFile: FusionServiceTests.model)
        #expect(maps.check(Self.header(levels: 3, bits: 7))?.reason == .modelMismatch)
    }
}

/// A deep-fusion pass prepares (decompress, peer head) only the maps that changed since the last
/// pass: a frame of one agent recomputes that agent alone, and the Result is the one a service
/// that never saw the earlier frames gives.
@Suite("Fusion service: deep fusion reuses what it computed from an unchanged map")
struct DeepPassReuseTests {
    static let model = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
        .appendingPathComponent("Models/slimsplit-deep.safetensors").path

    /// A deep-fusion frame: 16 channels, half the cells sent.
    static func ingest(_ fusion: FusionService, agent: String, sequence: UInt64, x: Double) throws -> Bool {
        try FusionServiceTests.ingest(fusion, agent: agent, sequence: sequence, x: x, channels: 16, halfSent: true)
    }

    static func computed(_ fusion: FusionService) throws -> Int {
        try #require(fusion.detectors[0] as? DeepFusionDetector).pass.computed
    }

    @Test func oneNewFrameOneAgentPrepared() throws {
        var options = FusionService.Options()
        options.threads = 2
        let fusion = try FusionService(modelFile: Self.model, options: options)
        for (a, x) in [("a", 0.0), ("b", 8.0), ("c", -6.0)] { #expect(try Self.ingest(fusion, agent: a, sequence: 1, x: x)) }
        #expect(fusion.tick().count == 3)
        #expect(try Self.computed(fusion) == 3)
        // A new frame of a: a pass for a, which reads b's and c's maps unchanged.
        // New frames of a, then a pass for a, which reads b's and c's maps unchanged. a's slot
        // double-buffers: after frames 3 and 4 its map is the tensor the last pass read frame 2
        // from, with new content.
        for (n, frames) in [[UInt64(2)], [3, 4]].enumerated() {
            for f in frames { #expect(try Self.ingest(fusion, agent: "a", sequence: f, x: Double(f))) }
            let sequence = frames.last!
            let out = fusion.tick()
            #expect(out.map(\.agent) == ["a"])
            #expect(try Self.computed(fusion) == 4 + n)

            // A service that sees only the latest frames fuses a's the same.
            let fresh = try FusionService(modelFile: Self.model, options: options)
            #expect(try Self.ingest(fresh, agent: "a", sequence: sequence, x: Double(sequence)))
            #expect(try Self.ingest(fresh, agent: "b", sequence: 1, x: 8))
            #expect(try Self.ingest(fresh, agent: "c", sequence: 1, x: -6))
            let want = try #require(fresh.tick(only: ["a"]).first)
            let got = try #require(out.first)
            #expect(!got.boxes.isEmpty)
            #expect(got.boxes == want.boxes)
        }
    }
}
