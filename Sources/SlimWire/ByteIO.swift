/// Reads little-endian fields from a message body. Every read is bounds-checked and fails with
/// `body_truncated`, naming the field.
public struct WireReader {
    public let bytes: UnsafeRawBufferPointer
    public private(set) var offset: Int

    public init(_ bytes: UnsafeRawBufferPointer, offset: Int = 0) {
        self.bytes = bytes
        self.offset = offset
    }

    public var remaining: Int { bytes.count - offset }

    @inline(__always)
    mutating func need(_ n: Int, _ field: StaticString) throws(WireError) {
        guard n >= 0, n <= remaining else {
            throw WireError(.bodyTruncated, "field \(field) needs \(n) bytes at offset \(offset), \(remaining) left")
        }
    }

    @inline(__always)
    mutating func integer<T: FixedWidthInteger>(_: T.Type, _ field: StaticString) throws(WireError) -> T {
        try need(MemoryLayout<T>.size, field)
        let v = T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }

    public mutating func u8(_ field: StaticString) throws(WireError) -> UInt8 { try integer(UInt8.self, field) }
    public mutating func u16(_ field: StaticString) throws(WireError) -> UInt16 { try integer(UInt16.self, field) }
    public mutating func u32(_ field: StaticString) throws(WireError) -> UInt32 { try integer(UInt32.self, field) }
    public mutating func u64(_ field: StaticString) throws(WireError) -> UInt64 { try integer(UInt64.self, field) }
    public mutating func f32(_ field: StaticString) throws(WireError) -> Float {
        Float(bitPattern: try integer(UInt32.self, field))
    }
    public mutating func f64(_ field: StaticString) throws(WireError) -> Double {
        Double(bitPattern: try integer(UInt64.self, field))
    }

    public mutating func bytes(_ n: Int, _ field: StaticString) throws(WireError) -> UnsafeRawBufferPointer {
        try need(n, field)
        defer { offset += n }
        return UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n])
    }

    /// An identifier (`str`, PROTOCOL.md §2): 1–64 bytes of `[A-Za-z0-9._-]`.
    public mutating func identifier(_ field: StaticString) throws(WireError) -> String {
        let n = Int(try u8(field))
        let raw = try bytes(n, field)
        guard Identifier.isValid(raw) else {
            throw WireError(.fieldOutOfRange, "\(field) must be 1-64 bytes of [A-Za-z0-9._-], got \(n) bytes")
        }
        return String(decoding: raw, as: UTF8.self)
    }
}

public enum Identifier {
    public static func isValid(_ raw: some Collection<UInt8>) -> Bool {
        guard (1...64).contains(raw.count) else { return false }
        return raw.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
                || b == 0x2E || b == 0x5F || b == 0x2D
        }
    }

    public static func isValid(_ s: String) -> Bool { isValid(Array(s.utf8)) }
}

/// Writes little-endian fields into caller-owned memory. The caller sizes the buffer with the
/// message's `encodedLength`; writing past it is a programming error and traps.
public struct WireWriter {
    public let buffer: UnsafeMutableRawBufferPointer
    public private(set) var offset: Int

    public init(_ buffer: UnsafeMutableRawBufferPointer, offset: Int = 0) {
        self.buffer = buffer
        self.offset = offset
    }

    @inline(__always)
    public mutating func integer<T: FixedWidthInteger>(_ v: T) {
        precondition(offset + MemoryLayout<T>.size <= buffer.count, "WireWriter overflow")
        buffer.storeBytes(of: v.littleEndian, toByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
    }

    public mutating func u8(_ v: UInt8) { integer(v) }
    public mutating func u16(_ v: UInt16) { integer(v) }
    public mutating func u32(_ v: UInt32) { integer(v) }
    public mutating func u64(_ v: UInt64) { integer(v) }
    public mutating func f32(_ v: Float) { integer(v.bitPattern) }
    public mutating func f64(_ v: Double) { integer(v.bitPattern) }

    public mutating func bytes(_ src: UnsafeRawBufferPointer) {
        precondition(offset + src.count <= buffer.count, "WireWriter overflow")
        if let s = src.baseAddress, src.count > 0 {
            (buffer.baseAddress! + offset).copyMemory(from: s, byteCount: src.count)
        }
        offset += src.count
    }

    public mutating func identifier(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            u8(UInt8(truncatingIfNeeded: utf8.count))
            bytes(UnsafeRawBufferPointer(utf8))
        }
    }

    public mutating func skip(_ n: Int) {
        precondition(offset + n <= buffer.count, "WireWriter overflow")
        offset += n
    }
}

/// `Array.withUnsafeBytes` with the body's typed error kept (the standard library's version
/// rethrows untyped).
@inlinable
public func withWireBytes<R>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(WireError) -> R)
    throws(WireError) -> R
{
    let r = bytes.withUnsafeBytes { p in Result { () throws(WireError) -> R in try body(p) } }
    return try r.get()
}
