/// Errors decoding a CDR message: what and where (byte offset in the serialized message).
public struct CDRError: Error, CustomStringConvertible, Sendable, Equatable {
    public var type: String
    public var offset: Int
    public var problem: String
    public var description: String { "\(type) at byte \(offset): \(problem)" }
}

/// Writes ROS 2 CDR (XCDR1, little endian): a 4-byte encapsulation header, then fields aligned
/// to their size (at most 8) relative to the end of that header.
struct CDRWriter {
    private(set) var bytes: [UInt8] = [0x00, 0x01, 0x00, 0x00]

    mutating func align(_ n: Int) {
        while (bytes.count - 4) % n != 0 { bytes.append(0) }
    }

    mutating func put<T: FixedWidthInteger>(_ v: T) {
        align(MemoryLayout<T>.size)
        withUnsafeBytes(of: v.littleEndian) { bytes += $0 }
    }

    mutating func f32(_ v: Float) { put(v.bitPattern) }
    mutating func f64(_ v: Double) { put(v.bitPattern) }
    mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    mutating func string(_ s: String) {
        put(UInt32(s.utf8.count + 1))
        bytes += s.utf8
        bytes.append(0)
    }
    mutating func withBytes(_ body: (inout [UInt8]) -> Void) { body(&bytes) }

    mutating func u8Sequence(_ d: [UInt8]) {
        put(UInt32(d.count))
        bytes += d
    }
}

/// Reads ROS 2 CDR (XCDR1, either endianness as the encapsulation header says), bounds-checked.
struct CDRReader {
    let data: UnsafeRawBufferPointer
    let type: String
    private(set) var pos = 4
    let littleEndian: Bool

    init(_ data: UnsafeRawBufferPointer, type: String) throws(CDRError) {
        self.data = data
        self.type = type
        guard data.count >= 4 else {
            throw CDRError(type: type, offset: 0, problem: "shorter than the 4-byte encapsulation header")
        }
        switch data[1] {
        case 0x01: littleEndian = true  // CDR_LE
        case 0x00: littleEndian = false  // CDR_BE
        default:
            throw CDRError(
                type: type, offset: 1, problem: "unsupported encapsulation \(data[0]) \(data[1]) (expected plain CDR)")
        }
    }

    func fail(_ p: String) -> CDRError { CDRError(type: type, offset: pos, problem: p) }

    mutating func align(_ n: Int) { pos += (n - (pos - 4) % n) % n }

    mutating func get<T: FixedWidthInteger>(_: T.Type) throws(CDRError) -> T {
        align(MemoryLayout<T>.size)
        guard data.count - pos >= MemoryLayout<T>.size else { throw fail("message ends inside a \(T.self)") }
        defer { pos += MemoryLayout<T>.size }
        let raw = data.loadUnaligned(fromByteOffset: pos, as: T.self)
        return littleEndian ? T(littleEndian: raw) : T(bigEndian: raw)
    }

    mutating func f32() throws(CDRError) -> Float { Float(bitPattern: try get(UInt32.self)) }
    mutating func f64() throws(CDRError) -> Double { Double(bitPattern: try get(UInt64.self)) }
    mutating func bool() throws(CDRError) -> Bool { try get(UInt8.self) != 0 }

    mutating func string() throws(CDRError) -> String {
        let n = Int(try get(UInt32.self))
        guard n >= 0, data.count - pos >= n else { throw fail("string of \(n) bytes runs past the end") }
        defer { pos += n }
        let end = n > 0 && data[pos + n - 1] == 0 ? n - 1 : n
        return String(decoding: UnsafeRawBufferPointer(rebasing: data[pos..<(pos + end)]), as: UTF8.self)
    }

    /// A sequence count, checked against what the rest of the message could hold.
    mutating func count(minElementSize: Int) throws(CDRError) -> Int {
        let n = Int(try get(UInt32.self))
        guard n * max(minElementSize, 1) <= data.count - pos else {
            throw fail("sequence of \(n) elements cannot fit in the \(data.count - pos) bytes left")
        }
        return n
    }

    mutating func bytes(_ n: Int) throws(CDRError) -> UnsafeRawBufferPointer {
        guard data.count - pos >= n else { throw fail("\(n) bytes run past the end") }
        defer { pos += n }
        return UnsafeRawBufferPointer(rebasing: data[pos..<(pos + n)])
    }
}
