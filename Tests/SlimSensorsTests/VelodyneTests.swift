import Foundation
import SlimSensors
import Testing

@Suite("Velodyne packets")
struct VelodyneTests {
    /// A sweep on the VLP-16's own lasers: every 0.2°, every laser, ranges 2–80 m.
    static func vlp16Sweep() -> [SIMD4<Float>] {
        var pts: [SIMD4<Float>] = []
        let els = VelodyneModel.vlp16.elevationsDeg
        for a in stride(from: 0, to: 36000, by: 20) {
            for (l, e) in els.enumerated() {
                let d = 2 + Double((a / 20 * 7 + l * 13) % 780) / 10
                let alpha = Double(a) / 100 * .pi / 180, om = e * .pi / 180
                pts.append(
                    SIMD4(Float(d * cos(om) * cos(alpha)), Float(-d * cos(om) * sin(alpha)), Float(d * sin(om)), 0.5))
            }
        }
        return pts
    }

    @Test("a sweep through packets and back: every point, within 2 mm and 0.01°", arguments: VelodyneModel.allCases)
    func roundTrip(model: VelodyneModel) throws {
        let sweep = Self.vlp16Sweep()
        let enc = VelodyneEncoder(model: model).encode(sweep, timestampUs: 0)
        #expect(enc.carried == sweep.count && enc.outOfRange == 0)
        #expect(enc.packets.allSatisfy { $0.count == Velodyne.packetSize })
        var asm = VelodyneSweeps(model: model)
        var got: [SIMD4<Float>] = []
        for p in enc.packets { if let s = p.withUnsafeBytes({ asm.add($0) }) { got = s } }
        // The next sweep's first packet closes this one.
        for p in enc.packets.prefix(1) { if let s = p.withUnsafeBytes({ asm.add($0) }) { got = s } }
        #expect(got.count == sweep.count, "\(got.count) of \(sweep.count)")
        #expect(asm.counters.isEmpty, "\(asm.counters)")
        guard model == .vlp16 else { return }  // the VLP-32C's lasers are elsewhere: count only
        let key = { (p: SIMD4<Float>) in [Int((p.x * 20).rounded()), Int((p.y * 20).rounded()), Int((p.z * 20).rounded())] }
        let want = Dictionary(sweep.map { (key($0), $0) }, uniquingKeysWith: { a, _ in a })
        var worst: Float = 0
        for p in got {
            let q = want[key(p)] ?? p
            worst = max(worst, ((p - q) * SIMD4(1, 1, 1, 0)).magnitude())
        }
        #expect(worst < 0.02, "worst position error \(worst) m")
    }

    @Test("wrong size, bad flag, bad azimuth, wrong product, reordering and gaps are counted; good packets still make sweeps")
    func malformed() {
        let enc = VelodyneEncoder(model: .vlp16).encode(Self.vlp16Sweep(), timestampUs: 0)
        var asm = VelodyneSweeps(model: .vlp16)
        var bad = enc.packets[3]
        bad[100] = 0x12  // block 1's flag
        var az = enc.packets[4]
        az[2] = 0xFF
        az[3] = 0xFF  // azimuth 65535
        var product = enc.packets[5]
        product[1205] = 0x28
        let inputs: [[UInt8]] =
            [Array(enc.packets[0].prefix(600)), enc.packets[0], enc.packets[1], enc.packets[2], bad, az, product]
            + [enc.packets[1]]  // late: reordered
            + Array(enc.packets[20...]) + [enc.packets[0]]
        var sweeps: [[SIMD4<Float>]] = []
        for p in inputs { if let s = p.withUnsafeBytes({ asm.add($0) }) { sweeps.append(s) } }
        #expect(asm.counters["wrong_size"] == 1)
        #expect(asm.counters["bad_block_flag"] == 1)
        #expect(asm.counters["bad_azimuth"] == 1)
        #expect(asm.counters["wrong_product"] == 1)
        #expect(asm.counters["reordered"] == 1)
        #expect((asm.counters["gaps"] ?? 0) >= 1, "\(asm.counters)")
        #expect(sweeps.count == 1 && !sweeps[0].isEmpty)
        // Random bytes of every size never trap.
        var rng = SystemRandomNumberGenerator()
        for n in [0, 1, 1205, 1206, 1207, 4000] {
            for _ in 0..<50 {
                let junk = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
                _ = junk.withUnsafeBytes { asm.add($0) }
            }
        }
    }

    @Test("a capture written for a sweep stream reads back the same payloads")
    func pcapRoundTrip() throws {
        let enc = VelodyneEncoder(model: .vlp16).encode(Self.vlp16Sweep(), timestampUs: 0)
        let grams = enc.packets.enumerated().map { Pcap.Datagram(timeNs: 1_000_000_000 + UInt64($0.offset) * 1_000_000, payload: $0.element) }
        let file = Pcap.write(grams, port: 2368)
        let back = try Pcap.udpPayloads(file, port: 2368)
        #expect(back.map(\.payload) == enc.packets)
        #expect(back.map(\.timeNs) == grams.map(\.timeNs))
        #expect(try Pcap.udpPayloads(file, port: 9999).isEmpty)
        #expect(throws: Pcap.Error.self) { try Pcap.udpPayloads(Array(file.prefix(30)), port: 2368) }
    }
}

extension SIMD4 where Scalar == Float {
    fileprivate func magnitude() -> Float { (self * self).sum().squareRoot() }
}
