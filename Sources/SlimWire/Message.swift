/// A message of protocol v1 that can be encoded to and decoded from its envelope.
///
/// Encoding writes exactly the v1 fields; decoding skips unknown trailing body fields
/// (PROTOCOL.md §3, "Evolution"), so a decoded v1 message re-encodes byte for byte.
public protocol WireMessage: Sendable, Equatable {
    static var kind: MessageKind { get }
    /// Length of the body this value encodes to.
    var bodyLength: Int { get }
    /// Length of the payload this value encodes to.
    var payloadLength: Int { get }
    func writeBody(_ w: inout WireWriter)
    func writePayload(_ w: inout WireWriter)
    /// Parses and validates the body and payload of a message whose envelope was already checked.
    init(body: inout WireReader, payload: UnsafeRawBufferPointer, limits: WireLimits) throws(WireError)
}

extension WireMessage {
    public var encodedLength: Int { Envelope.overhead + bodyLength + payloadLength }

    /// Encodes into `buffer`, which must hold `encodedLength` bytes; returns the length written.
    @discardableResult
    public func encode(into buffer: UnsafeMutableRawBufferPointer) -> Int {
        var w = WireWriter(buffer, offset: Envelope.headerLength)
        writeBody(&w)
        precondition(w.offset == Envelope.headerLength + bodyLength, "\(Self.self).bodyLength disagrees with writeBody")
        writePayload(&w)
        return Envelope.seal(buffer, kind: Self.kind, bodyLength: bodyLength, payloadLength: payloadLength)
    }

    public func encoded() -> [UInt8] {
        [UInt8](unsafeUninitializedCapacity: encodedLength) { buf, count in
            count = encode(into: UnsafeMutableRawBufferPointer(buf))
        }
    }

    /// Decodes a whole message of this kind.
    public static func decode(_ bytes: UnsafeRawBufferPointer, limits: WireLimits = .default) throws(WireError) -> Self
    {
        let env = try Envelope.open(bytes, limits: limits)
        guard env.kind == kind else { throw WireError(.unexpectedKind, "expected \(kind), got \(env.kind)") }
        var r = WireReader(env.body)
        return try Self(body: &r, payload: env.payload, limits: limits)
    }

    public static func decode(_ bytes: [UInt8], limits: WireLimits = .default) throws(WireError) -> Self {
        try withWireBytes(bytes) { (b) throws(WireError) -> Self in try decode(b, limits: limits) }
    }
}

/// Any message of protocol v1.
public enum Message: Sendable, Equatable {
    case hello(Hello)
    case featureFrame(FeatureFrame)
    case ack(Ack)
    case result(ResultMessage)
    case control(Control)
    case handover(Handover)
    case boxes(Boxes)

    public static func decode(_ bytes: UnsafeRawBufferPointer, limits: WireLimits = .default) throws(WireError)
        -> Message
    {
        let env = try Envelope.open(bytes, limits: limits)
        var r = WireReader(env.body)
        switch env.kind {
        case .hello: return .hello(try Hello(body: &r, payload: env.payload, limits: limits))
        case .featureFrame: return .featureFrame(try FeatureFrame(body: &r, payload: env.payload, limits: limits))
        case .ack: return .ack(try Ack(body: &r, payload: env.payload, limits: limits))
        case .result: return .result(try ResultMessage(body: &r, payload: env.payload, limits: limits))
        case .control: return .control(try Control(body: &r, payload: env.payload, limits: limits))
        case .handover: return .handover(try Handover(body: &r, payload: env.payload, limits: limits))
        case .boxes: return .boxes(try Boxes(body: &r, payload: env.payload, limits: limits))
        }
    }

    public static func decode(_ bytes: [UInt8], limits: WireLimits = .default) throws(WireError) -> Message {
        try withWireBytes(bytes) { (b) throws(WireError) -> Message in try decode(b, limits: limits) }
    }

    public func encoded() -> [UInt8] {
        switch self {
        case .hello(let m): m.encoded()
        case .featureFrame(let m): m.encoded()
        case .ack(let m): m.encoded()
        case .result(let m): m.encoded()
        case .control(let m): m.encoded()
        case .handover(let m): m.encoded()
        case .boxes(let m): m.encoded()
        }
    }

    public var kind: MessageKind {
        switch self {
        case .hello: .hello
        case .featureFrame: .featureFrame
        case .ack: .ack
        case .result: .result
        case .control: .control
        case .handover: .handover
        case .boxes: .boxes
        }
    }
}

@inline(__always)
func requireEmptyPayload(_ payload: UnsafeRawBufferPointer, _ kind: MessageKind) throws(WireError) {
    guard payload.isEmpty else {
        throw WireError(.fieldOutOfRange, "\(kind) carries no payload, got \(payload.count) bytes")
    }
}

// MARK: - Hello

/// Opens an agent's session (PROTOCOL.md §4.1).
public struct Hello: WireMessage {
    public static let kind = MessageKind.hello

    public enum SensorKind: UInt8, Sendable {
        case other = 0
        case lidar, camera, radar
    }

    public var agentID: String
    public var modelID: String
    /// SHA-256 of the agent's model file, 32 bytes.
    public var modelHash: [UInt8]
    public var sensorKind: SensorKind
    /// Widths the agent can run, in per-mille of the full channel count, strictly increasing.
    public var widths: [UInt16]
    /// Bit `b-1` set when the agent can send `b`-bit features.
    public var bitsMask: UInt8

    public init(
        agentID: String, modelID: String, modelHash: [UInt8] = .init(repeating: 0, count: 32),
        sensorKind: SensorKind = .lidar, widths: [UInt16] = [250, 500, 750, 1000], bitsMask: UInt8 = 0xFF
    ) {
        self.agentID = agentID
        self.modelID = modelID
        self.modelHash = modelHash
        self.sensorKind = sensorKind
        self.widths = widths
        self.bitsMask = bitsMask
    }

    public var bodyLength: Int { 1 + agentID.utf8.count + 1 + modelID.utf8.count + 32 + 1 + 1 + 2 * widths.count + 1 }
    public var payloadLength: Int { 0 }

    public func writeBody(_ w: inout WireWriter) {
        w.identifier(agentID)
        w.identifier(modelID)
        modelHash.withUnsafeBytes { w.bytes($0) }
        w.u8(sensorKind.rawValue)
        w.u8(UInt8(widths.count))
        for v in widths { w.u16(v) }
        w.u8(bitsMask)
    }

    public func writePayload(_ w: inout WireWriter) {}

    public init(body r: inout WireReader, payload: UnsafeRawBufferPointer, limits: WireLimits) throws(WireError) {
        agentID = try r.identifier("agent_id")
        modelID = try r.identifier("model_id")
        modelHash = Array(try r.bytes(32, "model_hash"))
        let sk = try r.u8("sensor_kind")
        guard let kind = SensorKind(rawValue: sk) else { throw WireError(.fieldOutOfRange, "sensor_kind \(sk) > 3") }
        sensorKind = kind
        let count = Int(try r.u8("width_count"))
        guard (1...16).contains(count) else { throw WireError(.fieldOutOfRange, "width_count \(count) not in 1...16") }
        var widths: [UInt16] = []
        widths.reserveCapacity(count)
        for _ in 0..<count {
            let v = try r.u16("widths")
            guard (1...1000).contains(v), v > (widths.last ?? 0) else {
                throw WireError(.fieldOutOfRange, "widths must be strictly increasing in 1...1000, got \(widths + [v])")
            }
            widths.append(v)
        }
        self.widths = widths
        bitsMask = try r.u8("bits_mask")
        guard bitsMask != 0 else { throw WireError(.fieldOutOfRange, "bits_mask is 0") }
        try requireEmptyPayload(payload, .hello)
    }
}

// MARK: - Ack

/// Acknowledges one accepted FeatureFrame (PROTOCOL.md §4.3).
public struct Ack: WireMessage {
    public static let kind = MessageKind.ack
    public var sequence: UInt64
    public var receiveTimeNs: UInt64
    public var bytesReceived: UInt32
    public var queueDelayNs: UInt32

    public init(sequence: UInt64, receiveTimeNs: UInt64, bytesReceived: UInt32, queueDelayNs: UInt32) {
        self.sequence = sequence
        self.receiveTimeNs = receiveTimeNs
        self.bytesReceived = bytesReceived
        self.queueDelayNs = queueDelayNs
    }

    public var bodyLength: Int { 24 }
    public var payloadLength: Int { 0 }
    public func writeBody(_ w: inout WireWriter) {
        w.u64(sequence)
        w.u64(receiveTimeNs)
        w.u32(bytesReceived)
        w.u32(queueDelayNs)
    }
    public func writePayload(_ w: inout WireWriter) {}
    public init(body r: inout WireReader, payload: UnsafeRawBufferPointer, limits: WireLimits) throws(WireError) {
        sequence = try r.u64("sequence")
        receiveTimeNs = try r.u64("receive_time_ns")
        bytesReceived = try r.u32("bytes_received")
        queueDelayNs = try r.u32("queue_delay_ns")
        try requireEmptyPayload(payload, .ack)
    }
}

// MARK: - Control

/// Caps an agent must respect until the next Control (PROTOCOL.md §4.5).
public struct Control: WireMessage {
    public static let kind = MessageKind.control
    public static let noWidthCap: UInt8 = 255

    public var epoch: UInt32
    public var maxWidthIndex: UInt8
    public var maxBits: UInt8
    public var maxRateHz: Float
    /// 0 welcome, 1 bandwidth budget, 2 operator; other values are accepted and kept.
    public var reason: UInt8

    public init(
        epoch: UInt32, maxWidthIndex: UInt8 = Control.noWidthCap, maxBits: UInt8 = 8, maxRateHz: Float = 0,
        reason: UInt8 = 0
    ) {
        self.epoch = epoch
        self.maxWidthIndex = maxWidthIndex
        self.maxBits = maxBits
        self.maxRateHz = maxRateHz
        self.reason = reason
    }

    public var bodyLength: Int { 11 }
    public var payloadLength: Int { 0 }
    public func writeBody(_ w: inout WireWriter) {
        w.u32(epoch)
        w.u8(maxWidthIndex)
        w.u8(maxBits)
        w.f32(maxRateHz)
        w.u8(reason)
    }
    public func writePayload(_ w: inout WireWriter) {}
    public init(body r: inout WireReader, payload: UnsafeRawBufferPointer, limits: WireLimits) throws(WireError) {
        epoch = try r.u32("epoch")
        maxWidthIndex = try r.u8("max_width_index")
        maxBits = try r.u8("max_bits")
        guard (1...8).contains(maxBits) else { throw WireError(.fieldOutOfRange, "max_bits \(maxBits) not in 1...8") }
        maxRateHz = try r.f32("max_rate_hz")
        guard maxRateHz.isFinite, maxRateHz >= 0 else {
            throw WireError(.fieldOutOfRange, "max_rate_hz \(maxRateHz) must be finite and >= 0")
        }
        reason = try r.u8("reason")
        try requireEmptyPayload(payload, .control)
    }
}

// MARK: - Handover

/// Moves an agent between region servers, make-before-break (PROTOCOL.md §4.6).
public struct Handover: WireMessage {
    public static let kind = MessageKind.handover

    public enum Action: UInt8, Sendable {
        /// Close the session to `endpoint` opened for an earlier `prepare` (the agent turned back).
        case cancel = 0
        /// Open a session to `endpoint` and send every frame to it as well as to this server.
        case prepare = 1
        /// `endpoint` is the agent's home now: take Results from it, and leave this server once
        /// it has acknowledged a frame.
        case commit = 2
        /// Where to go if this server goes silent (failover); no session is opened until then.
        case standby = 3
    }

    public var epoch: UInt32
    public var action: Action
    /// Name of the region `endpoint` serves (an identifier).
    public var region: String
    /// The target server's ZeroMQ endpoint, `tcp://…` or `ipc://…`.
    public var endpoint: String
    /// The target server's Curve public key, 32 bytes; all zero when Curve is off.
    public var serverKey: [UInt8]

    public init(epoch: UInt32, action: Action, region: String, endpoint: String, serverKey: [UInt8]? = nil) {
        self.epoch = epoch
        self.action = action
        self.region = region
        self.endpoint = endpoint
        self.serverKey = serverKey ?? [UInt8](repeating: 0, count: 32)
    }

    /// The Curve key, or nil when the target runs without Curve.
    public var curveKey: [UInt8]? { serverKey.allSatisfy { $0 == 0 } ? nil : serverKey }

    /// An endpoint a Handover may carry: 7–255 bytes of printable ASCII starting `tcp://` or `ipc://`.
    public static func isValidEndpoint(_ raw: some Collection<UInt8>) -> Bool {
        guard (7...255).contains(raw.count), raw.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return false }
        let head = Array(raw.prefix(6))
        return head == Array("tcp://".utf8) || head == Array("ipc://".utf8)
    }

    public var bodyLength: Int { 4 + 1 + 1 + region.utf8.count + 1 + endpoint.utf8.count + 32 }
    public var payloadLength: Int { 0 }
    public func writeBody(_ w: inout WireWriter) {
        w.u32(epoch)
        w.u8(action.rawValue)
        w.identifier(region)
        w.identifier(endpoint)
        serverKey.withUnsafeBytes { w.bytes($0) }
    }
    public func writePayload(_ w: inout WireWriter) {}
    public init(body r: inout WireReader, payload: UnsafeRawBufferPointer, limits: WireLimits) throws(WireError) {
        epoch = try r.u32("epoch")
        let a = try r.u8("action")
        guard let action = Action(rawValue: a) else { throw WireError(.fieldOutOfRange, "action \(a) > 3") }
        self.action = action
        region = try r.identifier("region")
        let n = Int(try r.u8("endpoint"))
        let raw = try r.bytes(n, "endpoint")
        guard Self.isValidEndpoint(raw) else {
            throw WireError(.fieldOutOfRange, "endpoint must be 7-255 printable bytes starting tcp:// or ipc://")
        }
        endpoint = String(decoding: raw, as: UTF8.self)
        serverKey = Array(try r.bytes(32, "server_key"))
        try requireEmptyPayload(payload, .handover)
    }
}

// MARK: - Result

/// One detected object, in the receiving agent's sensor frame (PROTOCOL.md §4.4).
public struct Detection: Sendable, Equatable {
    public static let recordSize = 40
    public var classID: UInt16
    public var score: Float
    public var center: SIMD3<Float>
    /// Length (along heading), width, height in metres.
    public var size: SIMD3<Float>
    public var yaw: Float
    public var trackID: UInt32

    public init(
        classID: UInt16, score: Float, center: SIMD3<Float>, size: SIMD3<Float>, yaw: Float, trackID: UInt32 = 0
    ) {
        self.classID = classID
        self.score = score
        self.center = center
        self.size = size
        self.yaw = yaw
        self.trackID = trackID
    }

    /// Writes records of `recordSize` bytes (PROTOCOL.md §4.4).
    static func write(_ detections: [Detection], to w: inout WireWriter) {
        for d in detections {
            w.u16(d.classID)
            w.u16(0)
            w.f32(d.score)
            w.f32(d.center.x)
            w.f32(d.center.y)
            w.f32(d.center.z)
            w.f32(d.size.x)
            w.f32(d.size.y)
            w.f32(d.size.z)
            w.f32(d.yaw)
            w.u32(d.trackID)
        }
    }

    /// Reads `count` records of `recordSize` bytes (≥ 40; bytes past the first 40 are skipped),
    /// checking the count against the limits and the payload length before allocating.
    static func records(count: Int, recordSize: Int, payload: UnsafeRawBufferPointer, limits: WireLimits)
        throws(WireError) -> [Detection]
    {
        guard count <= min(4096, limits.maxDetections) else {
            throw WireError(.fieldOutOfRange, "detection_count \(count) over \(min(4096, limits.maxDetections))")
        }
        guard recordSize >= Detection.recordSize else {
            throw WireError(.fieldOutOfRange, "record_size \(recordSize) < \(Detection.recordSize)")
        }
        guard payload.count == count * recordSize else {
            throw WireError(
                .payloadSizeMismatch,
                "\(count) records of \(recordSize) bytes need \(count * recordSize) payload bytes, got \(payload.count)"
            )
        }
        var dets: [Detection] = []
        dets.reserveCapacity(count)
        for i in 0..<count {
            var p = WireReader(payload, offset: i * recordSize)
            let classID = try p.u16("class_id")
            _ = try p.u16("reserved")
            let score = try p.f32("score")
            let c = SIMD3(try p.f32("x"), try p.f32("y"), try p.f32("z"))
            let s = SIMD3(try p.f32("length"), try p.f32("width"), try p.f32("height"))
            let yaw = try p.f32("yaw")
            let track = try p.u32("track_id")
            guard score.isFinite, (0...1).contains(score), c.x.isFinite, c.y.isFinite, c.z.isFinite,
                s.x.isFinite, s.y.isFinite, s.z.isFinite, s.x > 0, s.y > 0, s.z > 0, yaw.isFinite
            else {
                throw WireError(
                    .fieldOutOfRange, "detection \(i): score must be in 0...1, centre and yaw finite, size > 0")
            }
            dets.append(Detection(classID: classID, score: score, center: c, size: s, yaw: yaw, trackID: track))
        }
        return dets
    }
}

/// Detections for one fused tick (PROTOCOL.md §4.4). Named `ResultMessage` to keep clear of
/// Swift's `Result`.
public struct ResultMessage: WireMessage {
    public static let kind = MessageKind.result
    public var sequence: UInt64
    public var captureTimeNs: UInt64
    public var fusionTimeNs: UInt64
    public var detections: [Detection]

    public init(sequence: UInt64, captureTimeNs: UInt64, fusionTimeNs: UInt64, detections: [Detection]) {
        self.sequence = sequence
        self.captureTimeNs = captureTimeNs
        self.fusionTimeNs = fusionTimeNs
        self.detections = detections
    }

    public var bodyLength: Int { 28 }
    public var payloadLength: Int { detections.count * Detection.recordSize }
    public func writeBody(_ w: inout WireWriter) {
        w.u64(sequence)
        w.u64(captureTimeNs)
        w.u64(fusionTimeNs)
        w.u16(UInt16(detections.count))
        w.u16(UInt16(Detection.recordSize))
    }
    public func writePayload(_ w: inout WireWriter) { Detection.write(detections, to: &w) }
    public init(body r: inout WireReader, payload: UnsafeRawBufferPointer, limits: WireLimits) throws(WireError) {
        sequence = try r.u64("sequence")
        captureTimeNs = try r.u64("capture_time_ns")
        fusionTimeNs = try r.u64("fusion_time_ns")
        detections = try Detection.records(
            count: Int(try r.u16("detection_count")), recordSize: Int(try r.u16("record_size")), payload: payload,
            limits: limits)
    }
}
