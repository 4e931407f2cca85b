/// Encodes FeatureFrames from dense quantized feature maps into caller-owned buffers.
///
/// One encoder per agent; not thread-safe. Its scratch buffer grows to the largest frame seen and
/// is then reused, so steady-state encoding allocates nothing.
public final class FeatureFrameEncoder {
    private var scratch: UnsafeMutableRawBufferPointer

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
    ///     `codec` is the codec asked for: LZ4 is used only when it makes the payload smaller.
    ///     `rawLength` is computed here.
    ///   - dense: C·H·W quantized values, channel-major.
    ///   - mask: ⌈H·W/8⌉ bytes, bit i = cell i sent; padding bits must be 0.
    ///   - out: at least `maxEncodedLength(header)` bytes.
    /// - Returns: the message length and the codec used.
    public func encode(_ header: FeatureFrameHeader, dense: UnsafeBufferPointer<UInt8>, mask: UnsafeRawBufferPointer?,
                       into out: UnsafeMutableRawBufferPointer) -> (length: Int, codec: PayloadCodec) {
        var h = header
        h.masked = mask != nil
        let maxRaw = h.maskLength + FeaturePayload.packedLength(values: h.channels * h.cells, bits: Int(h.bits))
        precondition(out.count >= Envelope.overhead + h.bodyLength + maxRaw, "output buffer too small")
        if scratch.count < maxRaw {
            scratch.deallocate()
            scratch = .allocate(byteCount: maxRaw, alignment: 64)
        }
        var rawLength = 0
        if let mask {
            UnsafeMutableRawBufferPointer(rebasing: scratch[0..<h.maskLength])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: mask[0..<h.maskLength]))
            rawLength = h.maskLength
        }
        rawLength += FeaturePayload.pack(dense: dense, channels: h.channels, cells: h.cells, mask: mask, bits: Int(h.bits),
                                         into: UnsafeMutableRawBufferPointer(rebasing: scratch[rawLength...]))
        h.rawLength = rawLength
        let payloadStart = Envelope.headerLength + h.bodyLength
        let raw = UnsafeRawBufferPointer(rebasing: scratch[0..<rawLength])
        var payloadLength = rawLength
        if h.codec == .lz4,
           let n = LZ4Block.compress(raw, into: UnsafeMutableRawBufferPointer(rebasing: out[payloadStart..<(payloadStart + rawLength - 1)])) {
            payloadLength = n
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

    /// A decoded frame. `mask` and `values` point into the decoder and stay valid until its
    /// next `decode` call.
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
        if raw.count < h.rawLength {
            raw.deallocate()
            raw = .allocate(byteCount: h.rawLength, alignment: 64)
        }
        let sent = try FeaturePayload.decodeRaw(h, payload: env.payload, into: raw)
        let count = h.channels * sent
        if values.count < count {
            values.deallocate()
            values = .allocate(capacity: count)
        }
        FeaturePayload.unpack(UnsafeRawBufferPointer(rebasing: raw[h.maskLength..<h.rawLength]), count: count,
                              bits: Int(h.bits), into: values)
        return Decoded(header: h, messageLength: messageLength, sentCells: sent,
                       mask: h.masked ? UnsafeRawBufferPointer(rebasing: raw[0..<h.maskLength]) : nil,
                       values: UnsafeBufferPointer(rebasing: values[0..<count]))
    }
}
