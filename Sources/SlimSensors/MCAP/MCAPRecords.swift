/// MCAP records (https://mcap.dev/spec), as this reader parses and this writer writes them.
public enum MCAPOpcode: UInt8, Sendable {
    case header = 0x01
    case footer = 0x02
    case schema = 0x03
    case channel = 0x04
    case message = 0x05
    case chunk = 0x06
    case messageIndex = 0x07
    case chunkIndex = 0x08
    case attachment = 0x09
    case attachmentIndex = 0x0A
    case statistics = 0x0B
    case metadata = 0x0C
    case metadataIndex = 0x0D
    case summaryOffset = 0x0E
    case dataEnd = 0x0F
}

public let mcapMagic: [UInt8] = [0x89, 0x4D, 0x43, 0x41, 0x50, 0x30, 0x0D, 0x0A]

public struct MCAPSchema: Sendable, Equatable {
    public var id: UInt16
    public var name: String
    public var encoding: String
    public var data: [UInt8]
}

public struct MCAPChannel: Sendable, Equatable {
    public var id: UInt16
    public var schemaID: UInt16
    public var topic: String
    public var messageEncoding: String
    public var metadata: [String: String]
}

public struct MCAPChunkIndex: Sendable, Equatable {
    public var messageStartTime: UInt64, messageEndTime: UInt64
    public var chunkStartOffset: UInt64, chunkLength: UInt64
    public var messageIndexOffsets: [UInt16: UInt64]
    public var messageIndexLength: UInt64
    public var compression: String
    public var compressedSize: UInt64, uncompressedSize: UInt64
}

public struct MCAPStatistics: Sendable, Equatable {
    public var messageCount: UInt64 = 0
    public var schemaCount: UInt16 = 0
    public var channelCount: UInt32 = 0
    public var attachmentCount: UInt32 = 0
    public var metadataCount: UInt32 = 0
    public var chunkCount: UInt32 = 0
    public var messageStartTime: UInt64 = 0
    public var messageEndTime: UInt64 = 0
    public var channelMessageCounts: [UInt16: UInt64] = [:]
}

/// One record as the streaming reader yields it. Chunks are expanded into the records they
/// hold; message indexes (derived data) are checked for framing but not yielded.
public enum MCAPRecord: Sendable, Equatable {
    case header(profile: String, library: String)
    case footer(summaryStart: UInt64, summaryOffsetStart: UInt64, summaryCRC: UInt32)
    case schema(MCAPSchema)
    case channel(MCAPChannel)
    case message(channelID: UInt16, sequence: UInt32, logTime: UInt64, publishTime: UInt64, data: [UInt8])
    case chunkIndex(MCAPChunkIndex)
    case attachment(logTime: UInt64, createTime: UInt64, name: String, mediaType: String, data: [UInt8], crc: UInt32)
    case attachmentIndex(
        offset: UInt64, length: UInt64, logTime: UInt64, createTime: UInt64, dataSize: UInt64, name: String,
        mediaType: String)
    case statistics(MCAPStatistics)
    case metadata(name: String, metadata: [String: String])
    case metadataIndex(offset: UInt64, length: UInt64, name: String)
    case summaryOffset(groupOpcode: UInt8, groupStart: UInt64, groupLength: UInt64)
    case dataEnd(dataSectionCRC: UInt32)
    /// An opcode this reader does not know (skipped by readers; yielded for completeness).
    case unknown(opcode: UInt8)
}

/// A broken, truncated or unsupported MCAP file: what, and where.
public struct MCAPError: Error, CustomStringConvertible, Sendable, Equatable {
    public var file: String
    /// Byte offset of the record (its opcode) in the file, or of the record inside a chunk's
    /// uncompressed data when `inChunkAt` is set.
    public var offset: Int
    public var inChunkAt: Int?
    public var record: String
    public var problem: String

    public var description: String {
        let whereText = inChunkAt.map { "offset \(offset) inside the chunk at \($0)" } ?? "offset \(offset)"
        return "\(file): \(record) record at \(whereText): \(problem)"
    }
}

/// Where a record sits, for its errors.
struct MCAPErrorContext {
    let file: String
    let offset: Int
    let inChunkAt: Int?
    let record: String
    func callAsFunction(_ problem: String) -> MCAPError {
        MCAPError(file: file, offset: offset, inChunkAt: inChunkAt, record: record, problem: problem)
    }
}

/// Bounds-checked little-endian field reader over one record's content.
struct MCAPFieldReader {
    let bytes: UnsafeRawBufferPointer
    var pos: Int
    let end: Int
    let fail: MCAPErrorContext

    @inline(__always)
    mutating func need(_ n: Int, _ what: String) throws(MCAPError) {
        guard n >= 0, end - pos >= n else { throw fail("\(what) needs \(n) bytes, \(end - pos) left in the record") }
    }

    mutating func int<T: FixedWidthInteger>(_: T.Type, _ what: String) throws(MCAPError) -> T {
        try need(MemoryLayout<T>.size, what)
        defer { pos += MemoryLayout<T>.size }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: pos, as: T.self))
    }

    mutating func u8(_ w: String) throws(MCAPError) -> UInt8 { try int(UInt8.self, w) }
    mutating func u16(_ w: String) throws(MCAPError) -> UInt16 { try int(UInt16.self, w) }
    mutating func u32(_ w: String) throws(MCAPError) -> UInt32 { try int(UInt32.self, w) }
    mutating func u64(_ w: String) throws(MCAPError) -> UInt64 { try int(UInt64.self, w) }

    mutating func raw(_ n: Int, _ what: String) throws(MCAPError) -> UnsafeRawBufferPointer {
        try need(n, what)
        defer { pos += n }
        return UnsafeRawBufferPointer(rebasing: bytes[pos..<(pos + n)])
    }

    mutating func string(_ what: String) throws(MCAPError) -> String {
        let n = try u32("\(what) length")
        return String(decoding: try raw(Int(n), what), as: UTF8.self)
    }

    mutating func bytes32(_ what: String) throws(MCAPError) -> [UInt8] {
        let n = try u32("\(what) length")
        return Array(try raw(Int(n), what))
    }

    mutating func stringMap(_ what: String) throws(MCAPError) -> [String: String] {
        let n = Int(try u32("\(what) length"))
        try need(n, what)
        var sub = MCAPFieldReader(bytes: bytes, pos: pos, end: pos + n, fail: fail)
        var out: [String: String] = [:]
        while sub.pos < sub.end { out[try sub.string("\(what) key")] = try sub.string("\(what) value") }
        pos += n
        return out
    }

    mutating func u16u64Map(_ what: String) throws(MCAPError) -> [UInt16: UInt64] {
        let n = Int(try u32("\(what) length"))
        try need(n, what)
        var sub = MCAPFieldReader(bytes: bytes, pos: pos, end: pos + n, fail: fail)
        var out: [UInt16: UInt64] = [:]
        while sub.pos < sub.end { out[try sub.u16("\(what) key")] = try sub.u64("\(what) value") }
        pos += n
        return out
    }
}

/// Little-endian record writer.
struct MCAPBuffer {
    var bytes: [UInt8] = []

    mutating func int<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func string(_ s: String) {
        int(UInt32(s.utf8.count))
        bytes += s.utf8
    }
    mutating func bytes32(_ b: [UInt8]) {
        int(UInt32(b.count))
        bytes += b
    }
    mutating func stringMap(_ m: [String: String]) {
        var sub = MCAPBuffer()
        for (k, v) in m.sorted(by: { $0.key < $1.key }) {
            sub.string(k)
            sub.string(v)
        }
        bytes32(sub.bytes)
    }
    mutating func u16u64Map(_ m: [UInt16: UInt64]) {
        var sub = MCAPBuffer()
        for (k, v) in m.sorted(by: { $0.key < $1.key }) {
            sub.int(k)
            sub.int(v)
        }
        bytes32(sub.bytes)
    }

    /// Appends a record: opcode, u64 length, content.
    mutating func record(_ op: MCAPOpcode, _ content: (inout MCAPBuffer) -> Void) {
        var c = MCAPBuffer()
        content(&c)
        bytes.append(op.rawValue)
        int(UInt64(c.bytes.count))
        bytes += c.bytes
    }
}
