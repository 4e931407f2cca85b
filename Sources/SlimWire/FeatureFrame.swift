/// How a frame's dequantization parameters are given (PROTOCOL.md §4.2).
public enum FrameQuantization: Sendable, Equatable {
    /// Per-channel scale and zero point, carried in the frame.
    case inline(scales: [Float], zeroPoints: [UInt8])
    /// The model's static parameters for this width and bit depth.
    case model
    /// Residual codebook indices (quant_mode 2): the frame's C "channels" are the levels of the
    /// model's residual codebooks and each value is a codeword index of `bits` bits; a sent cell's
    /// vector is the sum of its levels' codewords.
    case codebook
}

public enum PayloadCodec: UInt8, Sendable {
    case none = 0
    case lz4 = 1
}

/// Everything of a FeatureFrame but its payload: what a receiver checks before it allocates
/// anything for the payload.
public struct FeatureFrameHeader: Sendable, Equatable {
    public var agentID: String
    public var sequence: UInt64
    public var captureTimeNs: UInt64
    /// Sensor position in the world frame, metres.
    public var position: SIMD3<Double>
    /// Unit quaternion (x, y, z, w), world ← sensor.
    public var orientation: SIMD4<Double>
    public var modelID: String
    public var widthIndex: UInt8
    /// Bits per value, 1...8.
    public var bits: UInt8
    public var channels: Int
    public var height: Int
    public var width: Int
    public var quant: FrameQuantization
    public var masked: Bool
    public var codec: PayloadCodec
    /// Payload length once the codec is undone: mask bytes + packed value bytes.
    public var rawLength: Int

    public init(
        agentID: String, sequence: UInt64, captureTimeNs: UInt64,
        position: SIMD3<Double> = .zero, orientation: SIMD4<Double> = SIMD4(0, 0, 0, 1),
        modelID: String, widthIndex: UInt8, bits: UInt8, channels: Int, height: Int, width: Int,
        quant: FrameQuantization, masked: Bool = false, codec: PayloadCodec = .none, rawLength: Int = 0
    ) {
        self.agentID = agentID
        self.sequence = sequence
        self.captureTimeNs = captureTimeNs
        self.position = position
        self.orientation = orientation
        self.modelID = modelID
        self.widthIndex = widthIndex
        self.bits = bits
        self.channels = channels
        self.height = height
        self.width = width
        self.quant = quant
        self.masked = masked
        self.codec = codec
        self.rawLength = rawLength
    }

    public var cells: Int { height * width }
    /// Mask bytes in the raw payload: ⌈H·W/8⌉ when masked, else 0.
    public var maskLength: Int { masked ? CellMask.byteCount(cells: cells) : 0 }

    var quantLength: Int {
        if case .inline(let s, _) = quant { return 1 + 5 * s.count }
        return 1
    }

    public var bodyLength: Int {
        1 + agentID.utf8.count + 8 + 8 + 24 + 32 + 1 + modelID.utf8.count + 1 + 1 + 6 + quantLength + 1 + 1 + 4
    }

    public func writeBody(_ w: inout WireWriter) {
        w.identifier(agentID)
        w.u64(sequence)
        w.u64(captureTimeNs)
        writePose(&w, position, orientation)
        w.identifier(modelID)
        w.u8(widthIndex)
        w.u8(bits)
        w.u16(UInt16(channels))
        w.u16(UInt16(height))
        w.u16(UInt16(width))
        switch quant {
        case .inline(let scales, let zps):
            w.u8(0)
            for s in scales { w.f32(s) }
            zps.withUnsafeBytes { w.bytes($0) }
        case .model:
            w.u8(1)
        case .codebook:
            w.u8(2)
        }
        w.u8(masked ? 1 : 0)
        w.u8(codec.rawValue)
        w.u32(UInt32(rawLength))
    }

    /// Parses and validates the body (PROTOCOL.md §4.2) and checks the declared sizes against
    /// `limits` and `payloadLength`. Nothing is allocated in proportion to the declared sizes.
    public init(body r: inout WireReader, payloadLength: Int, limits: WireLimits) throws(WireError) {
        agentID = try r.identifier("agent_id")
        sequence = try r.u64("sequence")
        captureTimeNs = try r.u64("capture_time_ns")
        (position, orientation) = try readPose(&r)
        modelID = try r.identifier("model_id")
        widthIndex = try r.u8("width_index")
        bits = try r.u8("bits")
        guard (1...8).contains(bits) else { throw WireError(.fieldOutOfRange, "bits \(bits) not in 1...8") }
        channels = Int(try r.u16("channels"))
        height = Int(try r.u16("height"))
        width = Int(try r.u16("width"))
        guard channels > 0, height > 0, width > 0 else {
            throw WireError(.fieldOutOfRange, "shape \(channels)x\(height)x\(width) has a zero dimension")
        }
        guard channels <= limits.maxChannels, height <= limits.maxHeight, width <= limits.maxWidth,
            channels * height * width <= limits.maxValues
        else {
            throw WireError(
                .overLimit,
                "shape \(channels)x\(height)x\(width) exceeds the limits (C ≤ \(limits.maxChannels), H ≤ \(limits.maxHeight), W ≤ \(limits.maxWidth), C·H·W ≤ \(limits.maxValues))"
            )
        }
        let mode = try r.u8("quant_mode")
        switch mode {
        case 0:
            let scaleBytes = try r.bytes(4 * channels, "scales")
            let zpBytes = try r.bytes(channels, "zero_points")
            var scales = [Float](repeating: 0, count: channels)
            for c in 0..<channels {
                let s = Float(
                    bitPattern: UInt32(littleEndian: scaleBytes.loadUnaligned(fromByteOffset: 4 * c, as: UInt32.self)))
                guard s.isFinite, s > 0 else {
                    throw WireError(.fieldOutOfRange, "scales[\(c)] = \(s) must be finite and > 0")
                }
                scales[c] = s
            }
            let zps = Array(zpBytes)
            let maxQ = (1 << Int(bits)) - 1
            if let c = zps.firstIndex(where: { Int($0) > maxQ }) {
                throw WireError(
                    .fieldOutOfRange, "zero_points[\(c)] = \(zps[c]) exceeds \(maxQ) for \(bits)-bit values")
            }
            quant = .inline(scales: scales, zeroPoints: zps)
        case 1:
            quant = .model
        case 2:
            quant = .codebook
        default:
            throw WireError(.fieldOutOfRange, "quant_mode \(mode) not in 0...2")
        }
        let maskMode = try r.u8("mask_mode")
        guard maskMode <= 1 else { throw WireError(.fieldOutOfRange, "mask_mode \(maskMode) not in 0...1") }
        masked = maskMode == 1
        let codecByte = try r.u8("codec")
        guard let codec = PayloadCodec(rawValue: codecByte) else {
            throw WireError(.fieldOutOfRange, "codec \(codecByte) not in 0...1")
        }
        self.codec = codec
        rawLength = Int(try r.u32("raw_length"))

        let maxRaw = maskLength + FeaturePayload.packedLength(values: channels * cells, bits: Int(bits))
        guard rawLength <= maxRaw else {
            throw WireError(
                .payloadSizeMismatch,
                "raw_length \(rawLength) exceeds \(maxRaw), the most a \(channels)x\(height)x\(width) \(bits)-bit frame can need"
            )
        }
        if !masked, rawLength != maxRaw {
            throw WireError(
                .payloadSizeMismatch,
                "raw_length \(rawLength) != \(maxRaw) for an unmasked \(channels)x\(height)x\(width) \(bits)-bit frame")
        }
        if codec == .none, rawLength != payloadLength {
            throw WireError(
                .payloadSizeMismatch, "raw_length \(rawLength) != payload_length \(payloadLength) with codec none")
        }
    }
}

/// One quantized feature map (PROTOCOL.md §4.2). The payload is kept exactly as sent, so a
/// decoded frame re-encodes byte for byte; `FeaturePayload` decodes it.
public struct FeatureFrame: WireMessage {
    public static let kind = MessageKind.featureFrame
    public var header: FeatureFrameHeader
    public var payload: [UInt8]

    public init(header: FeatureFrameHeader, payload: [UInt8]) {
        self.header = header
        self.payload = payload
    }

    public var bodyLength: Int { header.bodyLength }
    public var payloadLength: Int { payload.count }
    public func writeBody(_ w: inout WireWriter) { header.writeBody(&w) }
    public func writePayload(_ w: inout WireWriter) { payload.withUnsafeBytes { w.bytes($0) } }

    public init(body r: inout WireReader, payload: UnsafeRawBufferPointer, limits: WireLimits) throws(WireError) {
        header = try FeatureFrameHeader(body: &r, payloadLength: payload.count, limits: limits)
        self.payload = Array(payload)
        _ = try FeaturePayload.decode(self)  // a frame is only valid with a valid payload
    }
}

/// `position` f64[3] (finite) and `orientation` f64[4] (a unit quaternion x, y, z, w, |q| within
/// 1 ± 1e-3): the sensor pose of a FeatureFrame (§4.2) and of a Boxes message (§4.7).
func readPose(_ r: inout WireReader) throws(WireError) -> (SIMD3<Double>, SIMD4<Double>) {
    let position = SIMD3(try r.f64("position"), try r.f64("position"), try r.f64("position"))
    let orientation = SIMD4(
        try r.f64("orientation"), try r.f64("orientation"), try r.f64("orientation"), try r.f64("orientation"))
    guard position.x.isFinite, position.y.isFinite, position.z.isFinite else {
        throw WireError(.fieldOutOfRange, "position \(position) is not finite")
    }
    let norm = (orientation * orientation).sum().squareRoot()
    guard norm.isFinite, abs(norm - 1) <= 1e-3 else {
        throw WireError(.fieldOutOfRange, "orientation quaternion has norm \(norm), expected 1 ± 1e-3")
    }
    return (position, orientation)
}

func writePose(_ w: inout WireWriter, _ position: SIMD3<Double>, _ orientation: SIMD4<Double>) {
    w.f64(position.x)
    w.f64(position.y)
    w.f64(position.z)
    w.f64(orientation.x)
    w.f64(orientation.y)
    w.f64(orientation.z)
    w.f64(orientation.w)
}
