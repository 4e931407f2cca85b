/// Encodes FeatureFrames from dense quantized feature maps into caller-owned buffers.
///
/// One encoder per agent; not thread-safe. Its scratch buffer grows to the largest frame seen and
/// is then reused, so steady-state encoding allocates nothing.
public final class FeatureFrameEncoder {
    private var scratch: UnsafeMutableRawBufferPointer
    /// After a frame that LZ4 could not shrink by 1/16, the next `probeInterval - 1` frames
    /// skip the attempt (a feature stream's compressibility changes slowly); then LZ4 is tried
    /// again.
    public static let probeInterval = 16
    private var lz4Skip = 0

    public init(initialCapacity: Int = 64 << 10) {
        scratch = .allocate(byteCount: max(initialCapacity, 1), alignment: 64)
    }

    deinit { scratch.deallocate() }

    /// The largest message `encode` can write for frames of this header's shape and bit depth.
    public static func maxEncodedLength(_ header: FeatureFrameHeader) -> Int {
        Envelope.overhead + header.bodyLength + header.maskLength
            + FeaturePayload.packedLength(values: header.channels * header.cells, bits: Int(header.bits))
    }

    /// Encodes one frame into `out`.
    /// - Parameters:
    ///   - header: shape, bits, quantization and identity; `masked` must match `mask != nil`.
    ///     `codec` is the codec asked for: LZ4 is used only when it makes the payload smaller
    ///     (and, after a frame it barely shrank, only every `probeInterval` frames).
    ///     `rawLength` is computed here.
    ///   - dense: C·H·W quantized values, channel-major.
    ///   - mask: ⌈H·W/8⌉ bytes, bit i = cell i sent; padding bits must be 0.
    ///   - out: at least `maxEncodedLength(header)` bytes.
    /// - Returns: the message length and the codec used.
    public func encode(
        _ header: FeatureFrameHeader, dense: UnsafeBufferPointer<UInt8>, mask: UnsafeRawBufferPointer?,
        into out: UnsafeMutableRawBufferPointer
    ) -> (length: Int, codec: PayloadCodec) {
        var h = header
        h.masked = mask != nil
        let maxRaw = h.maskLength + FeaturePayload.packedLength(values: h.channels * h.cells, bits: Int(h.bits))
        precondition(out.count >= Envelope.overhead + h.bodyLength + maxRaw, "output buffer too small")
        if scratch.count < maxRaw, mask != nil || h.bits != 8 {
            scratch.deallocate()
            scratch = .allocate(byteCount: maxRaw, alignment: 64)
        }
        let raw: UnsafeRawBufferPointer
        if mask == nil, h.bits == 8 {
            raw = UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(dense)[0..<maxRaw])  // already in wire order
        } else {
            var n = 0
            if let mask {
                UnsafeMutableRawBufferPointer(rebasing: scratch[0..<h.maskLength])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: mask[0..<h.maskLength]))
                n = h.maskLength
            }
            n += FeaturePayload.pack(
                dense: dense, channels: h.channels, cells: h.cells, mask: mask, bits: Int(h.bits),
                into: UnsafeMutableRawBufferPointer(rebasing: scratch[n...]))
            raw = UnsafeRawBufferPointer(rebasing: scratch[0..<n])
        }
        let rawLength = raw.count
        h.rawLength = rawLength
        let payloadStart = Envelope.headerLength + h.bodyLength
        var payloadLength = rawLength
        var compressed: Int?
        if h.codec == .lz4 {
            if lz4Skip > 0 {
                lz4Skip -= 1
            } else {
                compressed = LZ4Block.compress(
                    raw,
                    into: UnsafeMutableRawBufferPointer(rebasing: out[payloadStart..<(payloadStart + rawLength - 1)]))
                if (compressed ?? rawLength) > rawLength - rawLength / 16 { lz4Skip = Self.probeInterval - 1 }
            }
        }
        if let compressed {
            payloadLength = compressed
        } else {
            h.codec = .none
            UnsafeMutableRawBufferPointer(rebasing: out[payloadStart...]).copyMemory(from: raw)
        }
        var w = WireWriter(out, offset: Envelope.headerLength)
        h.writeBody(&w)
        let length = Envelope.seal(out, kind: .featureFrame, bodyLength: h.bodyLength, payloadLength: payloadLength)
        return (length, h.codec)
    }
}

/// Decodes FeatureFrames into reusable buffers: the server's hot path.
///
/// Not thread-safe; one per consumer. Buffers grow to the largest frame accepted (bounded by the
/// limits, checked before growing) and are then reused.
public final class FeatureFrameDecoder {
    public let limits: WireLimits
    private var raw: UnsafeMutableRawBufferPointer
    private var values: UnsafeMutableBufferPointer<UInt8>

    public init(limits: WireLimits = .default) {
        self.limits = limits
        raw = .allocate(byteCount: 1, alignment: 64)
        values = .allocate(capacity: 1)
    }

    deinit {
        raw.deallocate()
        values.deallocate()
    }

    /// A decoded frame. `mask` and `values` point into the decoder or into the message itself
    /// (8-bit values without a codec are not copied): they stay valid until the decoder's next
    /// `decode` call and while the message is alive.
    public struct Decoded {
        public var header: FeatureFrameHeader
        /// Total message length.
        public var messageLength: Int
        /// Number of sent cells.
        public var sentCells: Int
        /// ⌈H·W/8⌉ bytes, or nil when every cell was sent.
        public var mask: UnsafeRawBufferPointer?
        /// C·K values in payload order (channel-major over the sent cells).
        public var values: UnsafeBufferPointer<UInt8>
    }

    /// Decodes a message whose envelope has been opened (`Envelope.open`) and is a FeatureFrame.
    public func decode(_ env: Envelope, messageLength: Int) throws(WireError) -> Decoded {
        precondition(env.kind == .featureFrame)
        var r = WireReader(env.body)
        let h = try FeatureFrameHeader(body: &r, payloadLength: env.payload.count, limits: limits)
        if h.codec == .lz4, raw.count < h.rawLength {
            raw.deallocate()
            raw = .allocate(byteCount: h.rawLength, alignment: 64)
        }
        let rawBytes = try FeaturePayload.undoCodec(h, payload: env.payload, scratch: raw)
        let sent = try FeaturePayload.checkRaw(h, raw: rawBytes)
        let count = h.channels * sent
        let packed = UnsafeRawBufferPointer(rebasing: rawBytes[h.maskLength...])
        let out: UnsafeBufferPointer<UInt8>
        if h.bits == 8 {
            out = packed.bindMemory(to: UInt8.self)  // bytes are the values: no copy
        } else {
            if values.count < count {
                values.deallocate()
                values = .allocate(capacity: count)
            }
            FeaturePayload.unpack(packed, count: count, bits: Int(h.bits), into: values)
            out = UnsafeBufferPointer(rebasing: values[0..<count])
        }
        return Decoded(
            header: h, messageLength: messageLength, sentCells: sent,
            mask: h.masked ? UnsafeRawBufferPointer(rebasing: rawBytes[0..<h.maskLength]) : nil,
            values: out)
    }
}
