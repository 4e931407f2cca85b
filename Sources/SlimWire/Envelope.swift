/// Message kinds (PROTOCOL.md §3).
public enum MessageKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case hello = 1
    case featureFrame = 2
    case ack = 3
    case result = 4
    case control = 5
    case handover = 6
    case boxes = 7

    public var description: String {
        switch self {
        case .hello: "Hello"
        case .featureFrame: "FeatureFrame"
        case .ack: "Ack"
        case .result: "Result"
        case .control: "Control"
        case .handover: "Handover"
        case .boxes: "Boxes"
        }
    }
}

/// A receiver's limits (PROTOCOL.md §6). Every size is checked against these before anything
/// is allocated.
public struct WireLimits: Sendable, Equatable {
    public var maxMessageBytes: Int = 16 << 20
    public var maxChannels: Int = 1024
    public var maxHeight: Int = 1024
    public var maxWidth: Int = 1024
    public var maxValues: Int = 1 << 24
    public var maxDetections: Int = 4096

    public init() {}
    public static let `default` = WireLimits()
}

/// The envelope of one message: header, body, payload and CRC (PROTOCOL.md §3).
public struct Envelope {
    public static let magic: (UInt8, UInt8, UInt8, UInt8) = (0x53, 0x4C, 0x53, 0x50)  // "SLSP"
    public static let version: UInt8 = 1
    public static let headerLength = 16
    public static let overhead = 20
    public static let maxBodyLength = 65_536

    public let kind: MessageKind
    public let body: UnsafeRawBufferPointer
    public let payload: UnsafeRawBufferPointer

    /// Checks a received message in the order PROTOCOL.md §3 gives, CRC included. The returned
    /// buffers point into `message` and are valid as long as it is.
    public static func open(_ message: UnsafeRawBufferPointer, limits: WireLimits = .default) throws(WireError)
        -> Envelope
    {
        let n = message.count
        guard n >= overhead else {
            throw WireError(.truncated, "message of \(n) bytes is shorter than the 20-byte envelope")
        }
        guard message[0] == magic.0, message[1] == magic.1, message[2] == magic.2, message[3] == magic.3 else {
            throw WireError(.badMagic, "magic is \(hex(message[0..<4])), expected 534c5350 (\"SLSP\")")
        }
        guard message[4] == version else {
            throw WireError(.unsupportedVersion, "version \(message[4]), this peer speaks 1")
        }
        let bodyLength = Int(UInt32(littleEndian: message.loadUnaligned(fromByteOffset: 8, as: UInt32.self)))
        let payloadLength = Int(UInt32(littleEndian: message.loadUnaligned(fromByteOffset: 12, as: UInt32.self)))
        guard bodyLength <= maxBodyLength else {
            throw WireError(.overLimit, "body_length \(bodyLength) exceeds \(maxBodyLength)")
        }
        let total = overhead + bodyLength + payloadLength
        guard total <= limits.maxMessageBytes else {
            throw WireError(.overLimit, "declared length \(total) exceeds the limit of \(limits.maxMessageBytes) bytes")
        }
        guard total == n else {
            throw WireError(.lengthMismatch, "header declares \(total) bytes, message has \(n)")
        }
        let stored = UInt32(littleEndian: message.loadUnaligned(fromByteOffset: n - 4, as: UInt32.self))
        let computed = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: message[0..<(n - 4)]))
        guard stored == computed else {
            throw WireError(.crcMismatch, "stored CRC \(hex32(stored)), computed \(hex32(computed))")
        }
        guard let kind = MessageKind(rawValue: message[5]) else {
            throw WireError(.unknownKind, "kind \(message[5]) is not known to protocol v1")
        }
        return Envelope(
            kind: kind,
            body: UnsafeRawBufferPointer(rebasing: message[headerLength..<(headerLength + bodyLength)]),
            payload: UnsafeRawBufferPointer(rebasing: message[(headerLength + bodyLength)..<(n - 4)]))
    }

    /// Writes the 16-byte header at the start of `buffer` and the CRC after the payload.
    /// The body and payload must already be in place.
    public static func seal(
        _ buffer: UnsafeMutableRawBufferPointer, kind: MessageKind, bodyLength: Int, payloadLength: Int
    ) -> Int {
        var w = WireWriter(buffer)
        w.u8(magic.0)
        w.u8(magic.1)
        w.u8(magic.2)
        w.u8(magic.3)
        w.u8(version)
        w.u8(kind.rawValue)
        w.u16(0)
        w.u32(UInt32(bodyLength))
        w.u32(UInt32(payloadLength))
        let end = headerLength + bodyLength + payloadLength
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: buffer[0..<end]))
        buffer.storeBytes(of: crc.littleEndian, toByteOffset: end, as: UInt32.self)
        return end + 4
    }
}

func hex(_ bytes: some Collection<UInt8>) -> String {
    bytes.map { b in (b < 16 ? "0" : "") + String(b, radix: 16) }.joined()
}

func hex32(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: 8 - s.count) + s
}
