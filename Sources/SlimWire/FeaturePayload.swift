import CLZ4

/// The payload of a FeatureFrame: optional cell mask, then values packed at 1–8 bits, optionally
/// LZ4-compressed (PROTOCOL.md §4.2). Pure functions over caller-owned memory, so the agent and
/// server hot paths allocate nothing per frame.
public enum FeaturePayload {
    /// ⌈values·bits/8⌉.
    @inlinable
    public static func packedLength(values: Int, bits: Int) -> Int { (values * bits + 7) / 8 }

    /// Number of set bits in the first `cells` bits of `mask`.
    public static func countCells(mask: UnsafeRawBufferPointer, cells: Int) -> Int {
        var n = 0
        let full = cells / 8
        var i = 0
        while i + 8 <= full {
            n += mask.loadUnaligned(fromByteOffset: i, as: UInt64.self).nonzeroBitCount
            i += 8
        }
        while i < full {
            n += mask[i].nonzeroBitCount
            i += 1
        }
        if cells % 8 != 0 { n += (mask[full] & UInt8((1 << (cells % 8)) - 1)).nonzeroBitCount }
        return n
    }

    /// Packs the values of the sent cells, channel by channel, LSB first, into `out`.
    /// - Parameters:
    ///   - dense: C·H·W values, channel-major; only the low `bits` bits of each are used.
    ///   - mask: ⌈H·W/8⌉ bytes, or nil for every cell.
    /// - Returns: bytes written, ⌈C·K·bits/8⌉.
    public static func pack(
        dense: UnsafeBufferPointer<UInt8>, channels: Int, cells: Int, mask: UnsafeRawBufferPointer?,
        bits: Int, into out: UnsafeMutableRawBufferPointer
    ) -> Int {
        precondition(dense.count >= channels * cells)
        if mask == nil, bits == 8 {
            out.copyMemory(
                from: UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(dense)[0..<(channels * cells)]))
            return channels * cells
        }
        var bw = BitWriter(out, bits: bits)
        if let mask {
            for c in 0..<channels {
                let plane = c * cells
                for i in 0..<cells where CellMask.contains(mask, i) {
                    bw.put(dense[plane + i])
                }
            }
        } else {
            for v in dense[0..<(channels * cells)] { bw.put(v) }
        }
        return bw.finish()
    }

    /// Unpacks `count` values of `bits` bits from `packed` into `out`.
    public static func unpack(
        _ packed: UnsafeRawBufferPointer, count: Int, bits: Int, into out: UnsafeMutableBufferPointer<UInt8>
    ) {
        precondition(out.count >= count && packed.count >= packedLength(values: count, bits: bits))
        if bits == 8 {
            UnsafeMutableRawBufferPointer(out).copyMemory(from: UnsafeRawBufferPointer(rebasing: packed[0..<count]))
            return
        }
        let valueMask = UInt64((1 << bits) - 1)
        var acc: UInt64 = 0
        var have = 0
        var byte = 0
        for j in 0..<count {
            if have < bits {
                acc |= UInt64(packed[byte]) << UInt64(have)
                byte += 1
                have += 8
            }
            out[j] = UInt8(truncatingIfNeeded: acc & valueMask)
            acc >>= UInt64(bits)
            have -= bits
        }
    }

    /// Undoes the codec: with codec none the payload itself is returned (no copy); with LZ4 it
    /// is decoded into `scratch` (at least `header.rawLength` bytes) with a bounds-checked
    /// decoder that must produce exactly `raw_length` bytes.
    public static func undoCodec(
        _ header: FeatureFrameHeader, payload: UnsafeRawBufferPointer,
        scratch: UnsafeMutableRawBufferPointer
    ) throws(WireError) -> UnsafeRawBufferPointer {
        let n = header.rawLength
        switch header.codec {
        case .none:
            return payload
        case .lz4:
            precondition(scratch.count >= n)
            guard payload.count > 0, payload.count <= Int(Int32.max), n > 0 else {
                throw WireError(.codecError, "LZ4 payload of \(payload.count) bytes for raw_length \(n)")
            }
            let got = LZ4_decompress_safe(
                payload.baseAddress!.assumingMemoryBound(to: CChar.self),
                scratch.baseAddress!.assumingMemoryBound(to: CChar.self),
                Int32(payload.count), Int32(n))
            guard got == Int32(n) else {
                throw WireError(
                    .codecError,
                    got < 0
                        ? "LZ4 block is malformed or decodes past raw_length \(n) (error at input byte \(-got))"
                        : "LZ4 block decodes to \(got) bytes, raw_length says \(n)")
            }
            return UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(scratch)[0..<n])
        }
    }

    /// Checks the raw payload (mask, then values): mask padding, `raw_length` against the sent
    /// cells, value padding.
    /// - Returns: K, the number of sent cells.
    public static func checkRaw(_ header: FeatureFrameHeader, raw: UnsafeRawBufferPointer) throws(WireError) -> Int {
        let n = raw.count
        var sent = header.cells
        if header.masked {
            let m = header.maskLength
            guard n >= m else {
                throw WireError(.payloadSizeMismatch, "raw payload of \(n) bytes is shorter than the \(m)-byte mask")
            }
            let mask = UnsafeRawBufferPointer(rebasing: raw[0..<m])
            let tail = header.cells % 8
            if tail != 0, mask[m - 1] >> UInt8(tail) != 0 {
                throw WireError(.fieldOutOfRange, "mask padding bits after cell \(header.cells - 1) are not zero")
            }
            sent = countCells(mask: mask, cells: header.cells)
        }
        let expected = header.maskLength + packedLength(values: header.channels * sent, bits: Int(header.bits))
        guard n == expected else {
            throw WireError(
                .payloadSizeMismatch,
                "raw_length \(n) != \(expected) for \(sent) sent cells of \(header.channels) channels at \(header.bits) bits"
            )
        }
        let usedBits = (header.channels * sent * Int(header.bits)) % 8
        if usedBits != 0, raw[n - 1] >> UInt8(usedBits) != 0 {
            throw WireError(.fieldOutOfRange, "padding bits after the last value are not zero")
        }
        return sent
    }

    /// Builds a payload from values in payload order (tests and tools; allocates).
    /// - Returns: the payload and `raw_length`; the codec actually used is `codec` unless LZ4 would
    ///   not shrink the payload, in which case it is `.none`.
    public static func build(mask: [Bool]?, values: [UInt8], bits: Int, codec: PayloadCodec) -> (
        payload: [UInt8], rawLength: Int, codec: PayloadCodec
    ) {
        var raw = [UInt8]()
        if let mask {
            raw += CellMask.bytes(mask)
        }
        var packed = [UInt8](repeating: 0, count: packedLength(values: values.count, bits: bits))
        values.withUnsafeBufferPointer { v in
            packed.withUnsafeMutableBytes { out in
                _ = pack(dense: v, channels: 1, cells: values.count, mask: nil, bits: bits, into: out)
            }
        }
        raw += packed
        guard codec == .lz4, let compressed = LZ4Block.compress(raw) else { return (raw, raw.count, .none) }
        return (compressed, raw.count, .lz4)
    }

    /// Decodes a frame's payload to its mask (nil when unmasked) and values in payload order
    /// (tests and tools; allocates).
    public static func decode(_ frame: FeatureFrame) throws(WireError) -> (mask: [Bool]?, values: [UInt8]) {
        let h = frame.header
        let rawBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(h.rawLength, 1), alignment: 16)
        defer { rawBuffer.deallocate() }
        let sent = try withWireBytes(frame.payload) { (p) throws(WireError) -> Int in
            let raw = try undoCodec(h, payload: p, scratch: rawBuffer)
            if h.codec == .none, raw.count > 0 { rawBuffer.copyMemory(from: raw) }
            return try checkRaw(h, raw: raw)
        }
        let raw = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(rawBuffer)[0..<h.rawLength])
        let mask: [Bool]? = h.masked ? CellMask.flags(raw, cells: h.cells) : nil
        let count = h.channels * sent
        var values = [UInt8](repeating: 0, count: count)
        values.withUnsafeMutableBufferPointer { out in
            unpack(
                UnsafeRawBufferPointer(rebasing: raw[h.maskLength..<h.rawLength]), count: count, bits: Int(h.bits),
                into: out)
        }
        return (mask, values)
    }
}

/// Appends `bits`-bit values LSB first (PROTOCOL.md §4.2).
struct BitWriter {
    let out: UnsafeMutableRawBufferPointer
    let bits: UInt64
    let valueMask: UInt64
    var acc: UInt64 = 0
    var have: UInt64 = 0
    var offset = 0

    init(_ out: UnsafeMutableRawBufferPointer, bits: Int) {
        self.out = out
        self.bits = UInt64(bits)
        self.valueMask = (1 << UInt64(bits)) - 1
    }

    @inline(__always)
    mutating func put(_ v: UInt8) {
        acc |= (UInt64(v) & valueMask) << have
        have += bits
        if have >= 32 {
            out.storeBytes(of: UInt32(truncatingIfNeeded: acc).littleEndian, toByteOffset: offset, as: UInt32.self)
            offset += 4
            acc >>= 32
            have -= 32
        }
    }

    mutating func finish() -> Int {
        while have > 0 {
            out[offset] = UInt8(truncatingIfNeeded: acc)
            offset += 1
            acc >>= 8
            have = have >= 8 ? have - 8 : 0
        }
        return offset
    }
}

/// LZ4 block format through liblz4.
public enum LZ4Block {
    /// Compresses `src` into `dst`; returns the compressed length, or nil when it would not fit
    /// in `dst` (pass a `dst` shorter than `src` to get nil for incompressible data).
    public static func compress(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer) -> Int? {
        guard src.count > 0, src.count <= Int(LZ4_MAX_INPUT_SIZE), dst.count > 0 else { return nil }
        let n = LZ4_compress_default(
            src.baseAddress!.assumingMemoryBound(to: CChar.self),
            dst.baseAddress!.assumingMemoryBound(to: CChar.self),
            Int32(src.count), Int32(min(dst.count, Int(Int32.max))))
        return n > 0 ? Int(n) : nil
    }

    /// Compressed bytes, or nil when LZ4 does not make `src` smaller.
    public static func compress(_ src: [UInt8]) -> [UInt8]? {
        guard src.count > 1 else { return nil }
        var out = [UInt8](repeating: 0, count: src.count - 1)
        let n = src.withUnsafeBytes { s in out.withUnsafeMutableBytes { d in compress(s, into: d) } }
        guard let n else { return nil }
        out.removeLast(out.count - n)
        return out
    }
}
