import Testing

@testable import SlimWire

@Suite("CRC, bit packing and the frame codec")
struct PayloadTests {
    @Test func crc32cCheckValue() {
        #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
        #expect(CRC32C.checksum([]) == 0)
        // Continuation over split buffers equals one pass.
        let data = (0..<1000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let one = CRC32C.checksum(data)
        let split = data.withUnsafeBytes { b in
            CRC32C.checksum(
                UnsafeRawBufferPointer(rebasing: b[333...]),
                continuing: CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[..<333])))
        }
        #expect(one == split)
    }

    @Test("hardware CRC-32C (three interleaved streams) equals a bitwise reference at every length class")
    func crc32cAgainstReference() {
        func reference(_ d: ArraySlice<UInt8>) -> UInt32 {
            var c: UInt32 = 0xFFFF_FFFF
            for b in d {
                c ^= UInt32(b)
                for _ in 0..<8 { c = (c >> 1) ^ (0x82F6_3B78 & (0 &- (c & 1))) }
            }
            return ~c
        }
        var rng = SystemRandomNumberGenerator()
        let data = (0..<100_000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        for n in [0, 1, 7, 8, 4095, 12_287, 12_288, 12_289, 24_577, 40_000, 100_000] {
            #expect(CRC32C.checksum(Array(data[0..<n])) == reference(data[0..<n]), "length \(n)")
        }
        let offset = Array(data[3..<50_003])  // unaligned start
        #expect(CRC32C.checksum(offset) == reference(data[3..<50_003]))
    }

    @Test("pack then unpack returns the values at every bit depth", arguments: 1...8)
    func packRoundTrip(bits: Int) {
        var rng = SystemRandomNumberGenerator()
        for count in [1, 7, 8, 9, 63, 64, 65, 1000] {
            let values = (0..<count).map { _ in UInt8.random(in: 0...UInt8((1 << bits) - 1), using: &rng) }
            let built = FeaturePayload.build(mask: nil, values: values, bits: bits, codec: .none)
            #expect(built.payload.count == (count * bits + 7) / 8)
            var out = [UInt8](repeating: 0, count: count)
            built.payload.withUnsafeBytes { p in
                out.withUnsafeMutableBufferPointer { FeaturePayload.unpack(p, count: count, bits: bits, into: $0) }
            }
            #expect(out == values)
        }
    }

    @Test("bit order is LSB first, as PROTOCOL.md §4.2 says")
    func bitOrder() {
        // 3-bit values 1, 2, 3 → stream bits 100 010 110 → byte 0 = 0b11_010_001, byte 1 = 0b0.
        #expect(FeaturePayload.build(mask: nil, values: [1, 2, 3], bits: 3, codec: .none).payload == [0b1101_0001, 0])
        #expect(FeaturePayload.build(mask: nil, values: [1, 0, 1, 1], bits: 1, codec: .none).payload == [0b1101])
    }

    @Test(
        "encoder and hot-path decoder agree",
        arguments: [(8, false, false), (4, true, true), (1, true, false), (5, false, true), (8, true, true)])
    func encodeDecode(bits: Int, masked: Bool, lz4: Bool) throws {
        let c = 5
        let h = 13
        let w = 11
        var rng = SystemRandomNumberGenerator()
        var dense = [UInt8](repeating: 0, count: c * h * w)
        var mask = [UInt8](repeating: 0, count: (h * w + 7) / 8)
        for i in 0..<(h * w) where Bool.random(using: &rng) { mask[i >> 3] |= 1 << UInt8(i & 7) }
        for i in dense.indices where i % 3 == 0 { dense[i] = UInt8.random(in: 0...UInt8((1 << bits) - 1), using: &rng) }
        let header = FeatureFrameHeader(
            agentID: "a-1", sequence: 9, captureTimeNs: 5, modelID: "m", widthIndex: 2,
            bits: UInt8(bits), channels: c, height: h, width: w,
            quant: .inline(scales: .init(repeating: 0.5, count: c), zeroPoints: .init(repeating: 0, count: c)),
            masked: masked, codec: lz4 ? .lz4 : .none)
        var out = [UInt8](repeating: 0, count: FeatureFrameEncoder.maxEncodedLength(header))
        let encoder = FeatureFrameEncoder()
        let (length, codec) = dense.withUnsafeBufferPointer { d in
            mask.withUnsafeBytes { m in
                out.withUnsafeMutableBytes { encoder.encode(header, dense: d, mask: masked ? m : nil, into: $0) }
            }
        }
        if !lz4 { #expect(codec == .none) }
        let decoder = FeatureFrameDecoder()
        let msg = Array(out[0..<length])
        let (values, sent) = try msg.withUnsafeBytes { b in
            let d = try decoder.decode(try Envelope.open(b), messageLength: length)
            return (Array(d.values), d.sentCells)
        }
        // Expected: channel-major over sent cells.
        var expected: [UInt8] = []
        var expectedSent = 0
        for ch in 0..<c {
            for i in 0..<(h * w) where !masked || mask[i >> 3] & (1 << UInt8(i & 7)) != 0 {
                expected.append(dense[ch * h * w + i])
                if ch == 0 { expectedSent += 1 }
            }
        }
        #expect(sent == expectedSent)
        #expect(values == expected)
        // The allocating decoder agrees too.
        guard case .featureFrame(let f) = try Message.decode(msg) else {
            Issue.record("not a frame")
            return
        }
        #expect(try FeaturePayload.decode(f).values == expected)
    }

    @Test("LZ4 is used only when it shrinks the payload")
    func lz4OnlyWhenSmaller() {
        let zeros = [UInt8](repeating: 0, count: 4096)
        #expect(FeaturePayload.build(mask: nil, values: zeros, bits: 8, codec: .lz4).codec == .lz4)
        var rng = SystemRandomNumberGenerator()
        let noise = (0..<4096).map { _ in UInt8.random(in: 0...255, using: &rng) }
        #expect(FeaturePayload.build(mask: nil, values: noise, bits: 8, codec: .lz4).codec == .none)
    }

    @Test("declared sizes are checked before anything is allocated")
    func limitsBeforeAllocation() {
        var limits = WireLimits()
        limits.maxValues = 1000
        let header = FeatureFrameHeader(
            agentID: "a", sequence: 1, captureTimeNs: 1, modelID: "m", widthIndex: 0, bits: 8,
            channels: 10, height: 10, width: 11, quant: .model, rawLength: 1100)
        let frame = FeatureFrame(header: header, payload: [UInt8](repeating: 0, count: 1100))
        #expect(
            rejection { () throws(WireError) in _ = try FeatureFrame.decode(frame.encoded(), limits: limits) }
                == .overLimit)
        var small = WireLimits()
        small.maxMessageBytes = 1000
        #expect(
            rejection { () throws(WireError) in _ = try FeatureFrame.decode(frame.encoded(), limits: small) }
                == .overLimit)
    }
}

/// The reason `body` was rejected with, or nil if it was not.
func rejection(_ body: () throws(WireError) -> Void) -> RejectReason? {
    do { try body() } catch { return error.reason }
    return nil
}
