/// Why a message was rejected. The raw values are the reason codes of PROTOCOL.md §7, used in
/// counters, logs and test vectors alike.
public enum RejectReason: String, Sendable, CaseIterable, Hashable, Codable {
    case truncated
    case badMagic = "bad_magic"
    case unsupportedVersion = "unsupported_version"
    case overLimit = "over_limit"
    case lengthMismatch = "length_mismatch"
    case crcMismatch = "crc_mismatch"
    case unknownKind = "unknown_kind"
    case bodyTruncated = "body_truncated"
    case fieldOutOfRange = "field_out_of_range"
    case payloadSizeMismatch = "payload_size_mismatch"
    case codecError = "codec_error"
    case helloRequired = "hello_required"
    case agentMismatch = "agent_mismatch"
    case staleSequence = "stale_sequence"
    case unexpectedKind = "unexpected_kind"
    case unauthenticated
    /// A Hello whose agent_id is not the name of the Curve key that authenticated the connection.
    case identityMismatch = "identity_mismatch"
    /// A frame whose shape or quantization contradicts the model the server fuses with.
    case modelMismatch = "model_mismatch"
    /// A numbered message from an agent that has left too many of the server's Acks and Controls
    /// unread (the server holds them rather than drop them, up to a bound).
    case ackBacklog = "ack_backlog"
}

/// A rejected message: the reason code plus what and where, for a person reading the log.
public struct WireError: Error, Sendable, Equatable, CustomStringConvertible {
    public var reason: RejectReason
    public var detail: String

    public init(_ reason: RejectReason, _ detail: String) {
        self.reason = reason
        self.detail = detail
    }

    public var description: String { "\(reason.rawValue): \(detail)" }
}
