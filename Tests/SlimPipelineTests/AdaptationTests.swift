import CAllocCounter
import Foundation
import SlimEngine
import SlimSensors
import Testing

@testable import SlimAgent

@Suite("Adaptation: goodput from Acks, width and bits from goodput")
struct AdaptationTests {
    /// The shipped model's rate–accuracy table (docs/evaluation.md): bytes after packing and LZ4.
    static let table: [WidthController.Configuration] = [
        .init(widthIndex: 3, bits: 8, bytes: 56_949, ap50: 26.3),
        .init(widthIndex: 3, bits: 4, bytes: 28_469, ap50: 26.4),
        .init(widthIndex: 1, bits: 8, bytes: 28_520, ap50: 27.1),
        .init(widthIndex: 1, bits: 4, bytes: 14_404, ap50: 27.2),
        .init(widthIndex: 0, bits: 4, bytes: 7_195, ap50: 26.7),
        .init(widthIndex: 0, bits: 2, bytes: 2_689, ap50: 22.1),
    ]

    @Test("the estimate falls within one frame when the link drops, and rises gradually")
    func estimator() {
        var e = GoodputEstimator()
        for _ in 0..<10 { e.add(bytes: 30_000, rttNs: 2_000_000) }  // floor: 2 ms, busy clamped to 1 ms
        e.add(bytes: 30_000, rttNs: 14_000_000)  // 12 ms on the link: 2.5 MB/s
        #expect(abs(e.bytesPerSecond! - 2_500_000) < 1)
        e.add(bytes: 30_000, rttNs: 122_000_000)  // the link drops to 250 kB/s
        #expect(abs(e.bytesPerSecond! - 250_000) < 1)
        #expect(e.queueingNs == 120_000_000)
        e.add(bytes: 30_000, rttNs: 14_000_000)  // recovers: only a quarter of the way up
        #expect(abs(e.bytesPerSecond! - (250_000 + 0.25 * 2_250_000)) < 1)
    }

    @Test(
        "the controller picks the most accurate configuration that meets the deadline, down at once, up with hysteresis"
    )
    func controller() {
        var c = WidthController(configurations: Self.table)
        // 20 Mbit/s: budget 0.07 s × 2.5 MB/s = 175 kB, everything fits; w=0.5 4 bits is the most accurate.
        var cfg = c.update(goodputBytesPerSecond: 2_500_000)
        #expect(cfg.widthIndex == 1 && cfg.bits == 4)
        // 2 Mbit/s: 17.5 kB per frame; w=0.5 4-bit (14.4 kB) still fits.
        cfg = c.update(goodputBytesPerSecond: 250_000)
        #expect(cfg.widthIndex == 1 && cfg.bits == 4)
        // 1 Mbit/s: 8.75 kB; down at once to w=0.25 4 bits.
        cfg = c.update(goodputBytesPerSecond: 125_000)
        #expect(cfg.widthIndex == 0 && cfg.bits == 4)
        // Back to 2 Mbit/s: not on the first frame...
        for _ in 0..<9 { cfg = c.update(goodputBytesPerSecond: 250_000) }
        #expect(cfg.widthIndex == 0)
        // ...but after ten.
        cfg = c.update(goodputBytesPerSecond: 250_000)
        #expect(cfg.widthIndex == 1 && cfg.bits == 4)
        // A server cap of 2 bits wins over the link.
        cfg = c.update(goodputBytesPerSecond: 2_500_000, maxBits: 2)
        #expect(cfg.bits == 2)
        // A link too slow for anything: the cheapest configuration.
        cfg = c.update(goodputBytesPerSecond: 1_000)
        #expect(cfg.bytes == 2_689)
    }

    @Test("a failed probe up backs off exponentially; steps up are at most maxStepUp x the bytes")
    func probeBackoff() {
        var c = WidthController(configurations: Self.table)
        c.maxStepUp = 2.2
        _ = c.update(goodputBytesPerSecond: 60_000)  // 4.2 kB budget: w=0.25 2 bits
        #expect(c.configuration.bytes == 2_689)
        // The estimate says 1 MB/s (small frames ride a token bucket's burst): up, but only to
        // <= 2.2 x 2,689 bytes... which no configuration is; so it stays.
        for _ in 0..<20 { _ = c.update(goodputBytesPerSecond: 1_000_000) }
        #expect(c.configuration.bytes == 2_689)
        var t = Self.table
        t.append(.init(widthIndex: 0, bits: 3, bytes: 5_000, ap50: 24))
        c = WidthController(configurations: t)
        c.maxStepUp = 2.2
        _ = c.update(goodputBytesPerSecond: 60_000)
        for _ in 0..<10 { _ = c.update(goodputBytesPerSecond: 1_000_000) }
        #expect(c.configuration.bytes == 5_000)  // one step: 2,689 -> 5,000
        for _ in 0..<10 { _ = c.update(goodputBytesPerSecond: 1_000_000) }
        #expect(c.configuration.bytes == 7_195)  // next: -> 7,195 (w=0.25 4 bits)
        // The probe fails: the next round trip is over the budget.
        _ = c.update(goodputBytesPerSecond: 1_000_000, rttSeconds: 0.12)
        #expect(c.configuration.bytes == 5_000)
        #expect(c.ceilingBytes == 7_195)
        // For 10 x 2 frames no probe reaches 7,195 bytes, however good the estimate...
        for _ in 0..<19 { _ = c.update(goodputBytesPerSecond: 1_000_000) }
        #expect(c.configuration.bytes == 5_000)
        // ...then it may probe again.
        for _ in 0..<12 { _ = c.update(goodputBytesPerSecond: 1_000_000) }
        #expect(c.configuration.bytes == 7_195)
        // Fails again: a longer back-off (40 frames), lifted when the estimate stays twice as high.
        _ = c.update(goodputBytesPerSecond: 1_000_000, rttSeconds: 0.12)
        #expect(c.configuration.bytes == 5_000 && c.ceilingBytes == 7_195)
        for _ in 0..<30 { _ = c.update(goodputBytesPerSecond: 1_000_000) }
        #expect(c.ceilingBytes == 7_195)
        for _ in 0..<9 { _ = c.update(goodputBytesPerSecond: 2_500_000) }
        #expect(c.ceilingBytes == 7_195)  // one good estimate is not enough...
        _ = c.update(goodputBytesPerSecond: 2_500_000)
        #expect(c.ceilingBytes == .infinity)  // ...ten in a row are
    }

    @Test("below the cheapest map is the boxes rung: down to it when no map fits, back after upAfter frames")
    func boxesRung() {
        var c = WidthController(configurations: Self.table)
        // Without the rung, a link too slow for anything keeps the cheapest map.
        _ = c.update(goodputBytesPerSecond: 20_000)
        #expect(!c.sendsBoxes && c.configuration.bytes == 2_689)
        c = WidthController(configurations: Self.table)
        c.fallsToBoxes = true
        _ = c.update(goodputBytesPerSecond: 250_000)
        #expect(!c.sendsBoxes)
        // 160 kbit/s: even the 2.7 kB map needs 134 ms of a 70 ms budget: boxes at once (the
        // cheapest map is the one it comes back to).
        _ = c.update(goodputBytesPerSecond: 20_000)
        #expect(c.sendsBoxes && c.configuration.bytes == 2_689)
        // Back: the cheapest map fits again (60 kB/s: 45 ms), but only after ten frames.
        for _ in 0..<9 { _ = c.update(goodputBytesPerSecond: 60_000) }
        #expect(c.sendsBoxes)
        _ = c.update(goodputBytesPerSecond: 60_000)
        #expect(!c.sendsBoxes && c.configuration.bytes == 2_689)
        // A quick return to boxes (within probeFrames) doubles the wait for the next try.
        _ = c.update(goodputBytesPerSecond: 20_000)
        #expect(c.sendsBoxes)
        for _ in 0..<19 { _ = c.update(goodputBytesPerSecond: 60_000) }
        #expect(c.sendsBoxes)
        _ = c.update(goodputBytesPerSecond: 60_000)
        #expect(!c.sendsBoxes)
        // Saturation while at the cheapest map (queueing delay) falls to boxes as well.
        _ = c.update(goodputBytesPerSecond: 60_000, queueingSeconds: 0.05)
        #expect(c.sendsBoxes)
    }

    @Test("the controller scales the table's bytes by what the frames measure")
    func bytesScale() {
        var c = WidthController(configurations: Self.table)
        _ = c.update(goodputBytesPerSecond: 250_000)  // 17.5 kB budget: w=0.5 4 bits (14.4 kB)
        #expect(c.configuration.widthIndex == 1 && c.configuration.bits == 4)
        for _ in 0..<30 { c.observe(bytes: 21_600) }  // this scene: 1.5x the table's size
        #expect(abs(c.bytesScale - 1.5) < 0.01)
        let cfg = c.update(goodputBytesPerSecond: 250_000)  // 14.4 kB x 1.5 no longer fits: down to w=0.25 4 bits
        #expect(cfg.widthIndex == 0 && cfg.bits == 4)
    }

    @Test("an operating point the model has no parameters for is refused, naming the model and the value")
    func operatingPointChecked() throws {
        let map = try EdgeEncoder(modelFile: modelPath)
        let deep = try EdgeEncoder(modelFile: deepModelPath)
        func problem(_ e: EdgeEncoder, _ wi: Int, _ bits: Int, _ t: Float, _ cb: Bool) -> String? {
            do {
                try e.setOperatingPoint(widthIndex: wi, bits: bits, threshold: t, codebook: cb)
                return nil
            } catch { return error.description }
        }
        #expect(problem(map, 3, 3, 0, false)?.contains("no 3-bit feature quantization at width index 3") == true)
        #expect(problem(map, 3, 3, 0, false)?.contains("slimsplit-bev.safetensors") == true)
        #expect(problem(map, 3, 8, 0, true)?.contains("no residual codebook") == true)
        #expect(problem(map, 7, 8, 0, false)?.contains("no width index 7") == true)
        #expect(problem(map, 3, 8, -1, false)?.contains("threshold") == true)
        #expect(problem(deep, 1, 8, 0, false)?.contains("runs at full width") == true)
        // Refused settings leave the encoder as it was; valid ones apply.
        #expect(map.widthIndex == 3 && map.bits == 8 && !map.codebook)
        #expect(problem(map, 1, 2, 0.5, false) == nil)
        #expect(map.widthIndex == 1 && map.bits == 2 && map.threshold == 0.5)
        #expect(problem(deep, 3, 2, 0.2, true) == nil && deep.codebook)
        // What demo and bench e2e send when no option names it.
        #expect(try EdgeEncoder.recommendedOperatingPoint(modelFile: deepModelPath) == (2, 0.2, true))
        #expect(try EdgeEncoder.recommendedOperatingPoint(modelFile: modelPath) == (4, 0, false))
    }

    @Test("the shipped model carries its rate-accuracy table; switching configuration allocates nothing")
    func shippedTableAndSwitching() throws {
        let edge = try EdgeEncoder(modelFile: modelPath)
        let table = try #require(edge.rateAccuracy)
        // Every width x {8, 4, 2} bits, with and without sparsity.
        #expect(table.count == edge.model.architecture.widths.count * 3 * 2)
        #expect(Set(table.map { "\($0.widthIndex).\($0.bits).\($0.threshold > 0)" }).count == table.count)
        #expect(table.allSatisfy { $0.bytes > 0 && $0.ap50 > 0 })
        // Replay one sweep through every configuration: width, bits and threshold are fields.
        let rec = try RecordingFrames(path: samplePath)
        let f = try #require(rec.frames.first { $0.agents["car_1"]?.points.isEmpty == false })
        let points = f.agents["car_1"]!.points
        // The controller's choice and the switch, as the agent does per frame, over a link that
        // swings between 100 kbit/s and 100 Mbit/s.
        var controller = WidthController(configurations: table)
        controller.upAfter = 1
        var channels = 0
        var seen = [Bool](repeating: false, count: 64)
        for pass in 0..<2 {  // the first pass warms up
            let before = slim_alloc_count()
            points.withUnsafeBufferPointer { p in
                for i in 0..<(4 * table.count) {
                    let c = controller.update(goodputBytesPerSecond: i % 8 < 4 ? 12_500 : 12_500_000, rttSeconds: 0.01)
                    edge.widthIndex = c.widthIndex
                    edge.bits = c.bits
                    edge.threshold = c.threshold
                    channels += edge.encode(p, sensorHeight: 1.9).channels
                    seen[c.widthIndex * 9 + c.bits] = true
                }
            }
            if pass == 1 {
                #expect(slim_alloc_count() - before == 0, "allocations while choosing, switching and encoding")
            }
        }
        // ...and it did switch: configurations of several widths and depths ran.
        #expect(seen.filter { $0 }.count >= 2)
        #expect(channels > 0)
    }
}
