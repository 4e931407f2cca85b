import Testing
@testable import SlimAgent

@Suite("Adaptation: goodput from Acks, width and bits from goodput")
struct AdaptationTests {
    /// The shipped model's rate–accuracy table (docs/evaluation.md): bytes after packing and LZ4.
    static let table: [WidthController.Configuration] = [
        .init(widthIndex: 3, bits: 8, bytes: 56_949, accuracy: 26.3), .init(widthIndex: 3, bits: 4, bytes: 28_469, accuracy: 26.4),
        .init(widthIndex: 1, bits: 8, bytes: 28_520, accuracy: 27.1), .init(widthIndex: 1, bits: 4, bytes: 14_404, accuracy: 27.2),
        .init(widthIndex: 0, bits: 4, bytes: 7_195, accuracy: 26.7), .init(widthIndex: 0, bits: 2, bytes: 2_689, accuracy: 22.1),
    ]

    @Test("the estimate falls within one frame when the link drops, and rises gradually")
    func estimator() {
        var e = GoodputEstimator()
        for _ in 0..<10 { e.add(bytes: 30_000, rttNs: 2_000_000) }  // floor: 2 ms, busy clamped to 1 ms
        e.add(bytes: 30_000, rttNs: 14_000_000)                       // 12 ms on the link: 2.5 MB/s
        #expect(abs(e.bytesPerSecond! - 2_500_000) < 1)
        e.add(bytes: 30_000, rttNs: 122_000_000)                      // the link drops to 250 kB/s
        #expect(abs(e.bytesPerSecond! - 250_000) < 1)
        #expect(e.queueingNs == 120_000_000)
        e.add(bytes: 30_000, rttNs: 14_000_000)                       // recovers: only a quarter of the way up
        #expect(abs(e.bytesPerSecond! - (250_000 + 0.25 * 2_250_000)) < 1)
    }

    @Test("the controller picks the most accurate configuration that meets the deadline, down at once, up with hysteresis")
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
}
