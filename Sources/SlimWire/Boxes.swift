/// An agent's own detections for one capture, in its sensor frame (PROTOCOL.md §4.7, revision
/// 1.2): the lowest rung of the adaptation ladder. A link too weak for any feature map still
/// cooperates by late fusion: the server merges these boxes with what it fuses from the others.
/// Acknowledged like a FeatureFrame, and numbered in the same sequence.
public struct Boxes: WireMessage {
    public static let kind = MessageKind.boxes
    public var agentID: String
    public var sequence: UInt64
    public var captureTimeNs: UInt64
    /// Sensor position in the world frame, metres.
    public var position: SIMD3<Double>
    /// Unit quaternion (x, y, z, w), world ← sensor.
    public var orientation: SIMD4<Double>
    /// In the sensor frame, records as in Result (§4.4).
    public var detections: [Detection]

    public init(
        agentID: String, sequence: UInt64, captureTimeNs: UInt64, position: SIMD3<Double> = .zero,
        orientation: SIMD4<Double> = SIMD4(0, 0, 0, 1), detections: [Detection]
    ) {
        self.agentID = agentID
        self.sequence = sequence
        self.captureTimeNs = captureTimeNs
        self.position = position
        self.orientation = orientation
        self.detections = detections
    }

    public var bodyLength: Int { 1 + agentID.utf8.count + 8 + 8 + 24 + 32 + 2 + 2 }
    public var payloadLength: Int { detections.count * Detection.recordSize }

    public func writeBody(_ w: inout WireWriter) {
        w.identifier(agentID)
        w.u64(sequence)
        w.u64(captureTimeNs)
        writePose(&w, position, orientation)
        w.u16(UInt16(detections.count))
        w.u16(UInt16(Detection.recordSize))
    }

    public func writePayload(_ w: inout WireWriter) { Detection.write(detections, to: &w) }

    public init(body r: inout WireReader, payload: UnsafeRawBufferPointer, limits: WireLimits) throws(WireError) {
        agentID = try r.identifier("agent_id")
        sequence = try r.u64("sequence")
        captureTimeNs = try r.u64("capture_time_ns")
        (position, orientation) = try readPose(&r)
        detections = try Detection.records(
            count: Int(try r.u16("detection_count")), recordSize: Int(try r.u16("record_size")), payload: payload,
            limits: limits)
    }
}
