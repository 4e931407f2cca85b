import CKernels
import Glibc

/// One message as the reader hands it out. `data` points into the file's mapping or the
/// reader's chunk buffer: valid only during the callback.
public struct MCAPMessageView {
    public let channel: MCAPChannel
    public let schema: MCAPSchema?
    public let sequence: UInt32
    public let logTime: UInt64
    public let publishTime: UInt64
    public let data: UnsafeRawBufferPointer
}

/// Reads MCAP files (https://mcap.dev/spec) as a stream of records, in file order.
///
/// Accepts what real recordings contain: chunked or not, chunks uncompressed, LZ4 or zstd (the
/// official writers' default), records with extra trailing bytes (skipped), unknown opcodes
/// (skipped), schemas and channels in the data section or the summary. CRCs are checked where
/// the file has them (non-zero). A truncated or corrupted file yields everything valid before
/// the damage, then throws an `MCAPError` naming the record and its offset. Every step moves
/// forward by at least one record header, so no input loops forever. Sizes are checked before
/// anything is allocated.
public final class MCAPReader {
    public static let maxChunkBytes = 1 << 30
    /// The largest decompressed chunk this reader allocates for (default `maxChunkBytes`).
    public var chunkLimit = MCAPReader.maxChunkBytes
    public let file: String
    private let base: UnsafeMutableRawPointer?
    private let size: Int
    public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: size) }
    public private(set) var schemas: [UInt16: MCAPSchema] = [:]
    public private(set) var channels: [UInt16: MCAPChannel] = [:]
    private var chunkBuffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    private let mapped: Bool

    /// Maps the file at `path` (read-only).
    public init(path: String) throws(MCAPError) {
        file = path
        mapped = true
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else {
            throw MCAPError(file: path, offset: 0, record: "file", problem: String(cString: strerror(errno)))
        }
        defer { close(fd) }
        var st = stat()
        fstat(fd, &st)
        size = Int(st.st_size)
        if size > 0 {
            let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
            guard let p, p != MAP_FAILED else {
                throw MCAPError(file: path, offset: 0, record: "file", problem: "cannot map the file")
            }
            base = p
        } else {
            base = nil
        }
        try checkMagic()
    }

    /// Reads a recording held in memory (a copy is kept); `name` stands for the file in errors.
    public init(bytes: UnsafeRawBufferPointer, name: String = "<memory>") throws(MCAPError) {
        file = name
        mapped = false
        size = bytes.count
        if size > 0 {
            let p = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
            p.copyMemory(from: bytes.baseAddress!, byteCount: size)
            base = p
        } else {
            base = nil
        }
        try checkMagic()
    }

    private func checkMagic() throws(MCAPError) {
        guard size >= 8, memcmp(base!, mcapMagic, 8) == 0 else {
            throw MCAPError(
                file: file, offset: 0, record: "magic",
                problem: size < 8
                    ? "file of \(size) bytes is too short for the MCAP magic" : "not an MCAP file (bad magic)")
        }
    }

    deinit {
        if let base { if mapped { munmap(base, size) } else { base.deallocate() } }
        chunkBuffer.deallocate()
    }

    /// Streams every record in file order, chunks expanded (message indexes are checked for
    /// framing only). Stops when `body` returns false.
    public func forEachRecord(_ body: (MCAPRecord) -> Bool) throws(MCAPError) {
        try scan { (op, content, fail) throws(MCAPError) -> Bool in
            guard let r = try Self.parse(op, content, fail: fail, keepData: true) else { return true }
            return body(r)
        }
    }

    /// Streams every message in file order. Stops when `body` returns false.
    public func forEachMessage(_ body: (MCAPMessageView) -> Bool) throws(MCAPError) {
        try scan { (op, content, fail) throws(MCAPError) -> Bool in
            guard op == MCAPOpcode.message.rawValue else { return true }
            var r = MCAPFieldReader(bytes: content, pos: 0, end: content.count, fail: fail)
            let channelID = try r.u16("channel_id")
            let sequence = try r.u32("sequence")
            let logTime = try r.u64("log_time")
            let publishTime = try r.u64("publish_time")
            guard let channel = channels[channelID] else {
                throw fail("message on channel \(channelID), which no Channel record defined")
            }
            let data = UnsafeRawBufferPointer(rebasing: content[r.pos...])
            return body(
                MCAPMessageView(
                    channel: channel, schema: schemas[channel.schemaID], sequence: sequence,
                    logTime: logTime, publishTime: publishTime, data: data))
        }
    }

    /// The core loop: yields (opcode, content) for every record of the data and summary
    /// sections, expanding chunks, and registers schemas and channels on the way.
    private func scan(_ body: (UInt8, UnsafeRawBufferPointer, MCAPErrorContext) throws(MCAPError) -> Bool)
        throws(MCAPError)
    {
        let all = bytes
        var pos = 8
        var sawFooter = false
        while pos < size {
            if sawFooter {
                guard size - pos == 8, memcmp(base! + pos, mcapMagic, 8) == 0 else {
                    throw MCAPError(
                        file: file, offset: pos, record: "magic", problem: "expected the closing magic after the footer"
                    )
                }
                return
            }
            let start = pos
            guard size - pos >= 9 else {
                throw MCAPError(
                    file: file, offset: pos, record: "record", problem: "file ends inside a record header (truncated?)")
            }
            let op = all[pos]
            let length = UInt64(littleEndian: all.loadUnaligned(fromByteOffset: pos + 1, as: UInt64.self))
            let name = MCAPOpcode(rawValue: op).map { "\($0)" } ?? "opcode 0x\(String(op, radix: 16))"
            guard length <= UInt64(size - pos - 9) else {
                throw MCAPError(
                    file: file, offset: start, record: name,
                    problem: "length \(length) runs past the end of the file (\(size - pos - 9) bytes left; truncated?)"
                )
            }
            let content = UnsafeRawBufferPointer(rebasing: all[(pos + 9)..<(pos + 9 + Int(length))])
            pos += 9 + Int(length)
            let fail = MCAPErrorContext(file: file, offset: start, inChunkAt: nil, record: name)
            switch op {
            case MCAPOpcode.chunk.rawValue:
                if try !expandChunk(content, at: start, fail: fail, body) { return }
            case MCAPOpcode.messageIndex.rawValue:
                continue
            default:
                if op == MCAPOpcode.footer.rawValue {
                    sawFooter = true
                    try checkSummaryCRC(content, footerAt: start, fail: fail)
                }
                if op == MCAPOpcode.dataEnd.rawValue, content.count >= 4 {
                    let stored = UInt32(littleEndian: content.loadUnaligned(as: UInt32.self))
                    if stored != 0 {
                        let got = slim_crc32(0, base, start)
                        guard got == stored else {
                            throw fail("data_section_crc mismatch: stored \(stored), computed \(got)")
                        }
                    }
                }
                try register(op, content, fail: fail)
                if try !body(op, content, fail) { return }
            }
        }
        if !sawFooter {
            throw MCAPError(
                file: file, offset: size, record: "footer", problem: "file ends without a footer (truncated?)")
        }
    }

    private func checkSummaryCRC(_ content: UnsafeRawBufferPointer, footerAt start: Int, fail: MCAPErrorContext)
        throws(MCAPError)
    {
        guard content.count >= 20 else { return }  // parse() reports the short footer
        let summaryStart = UInt64(littleEndian: content.loadUnaligned(fromByteOffset: 0, as: UInt64.self))
        let stored = UInt32(littleEndian: content.loadUnaligned(fromByteOffset: 16, as: UInt32.self))
        guard stored != 0, summaryStart != 0 else { return }
        guard summaryStart <= UInt64(start) else { throw fail("summary_start \(summaryStart) is after the footer") }
        let end = start + 9 + 16  // opcode, length, summary_start, summary_offset_start
        let got = slim_crc32(0, base! + Int(summaryStart), end - Int(summaryStart))
        guard got == stored else { throw fail("summary_crc mismatch: stored \(stored), computed \(got)") }
    }

    private func register(_ op: UInt8, _ content: UnsafeRawBufferPointer, fail: MCAPErrorContext) throws(MCAPError) {
        if op == MCAPOpcode.schema.rawValue,
            case .schema(let s)? = try Self.parse(op, content, fail: fail, keepData: true)
        {
            schemas[s.id] = s
        } else if op == MCAPOpcode.channel.rawValue,
            case .channel(let c)? = try Self.parse(op, content, fail: fail, keepData: true)
        {
            channels[c.id] = c
        }
    }

    private func expandChunk(
        _ content: UnsafeRawBufferPointer, at chunkOffset: Int, fail: MCAPErrorContext,
        _ body: (UInt8, UnsafeRawBufferPointer, MCAPErrorContext) throws(MCAPError) -> Bool
    ) throws(MCAPError) -> Bool {
        var r = MCAPFieldReader(bytes: content, pos: 0, end: content.count, fail: fail)
        _ = try r.u64("message_start_time")
        _ = try r.u64("message_end_time")
        let uncompressedSize = try r.u64("uncompressed_size")
        let crc = try r.u32("uncompressed_crc")
        let compression = try r.string("compression")
        let recordsLength = try r.u64("records length")
        guard recordsLength <= UInt64(r.end - r.pos) else {
            throw fail("records length \(recordsLength) exceeds the chunk's \(r.end - r.pos) bytes")
        }
        let compressed = try r.raw(Int(recordsLength), "records")
        guard uncompressedSize <= UInt64(chunkLimit) else {
            throw fail("uncompressed_size \(uncompressedSize) exceeds the limit of \(chunkLimit) bytes")
        }
        let n = Int(uncompressedSize)
        let records: UnsafeRawBufferPointer
        switch compression {
        case "":
            guard compressed.count == n else {
                throw fail("uncompressed chunk holds \(compressed.count) bytes, uncompressed_size says \(n)")
            }
            records = compressed
        case "lz4", "zstd":
            if chunkBuffer.count < n {
                chunkBuffer.deallocate()
                chunkBuffer = .allocate(byteCount: n, alignment: 16)
            }
            let out = UnsafeMutableRawBufferPointer(rebasing: chunkBuffer[0..<n])
            if compression == "lz4", let problem = LZ4Frame.decompress(compressed, into: out) {
                throw fail("LZ4 chunk does not decompress: \(problem)")
            }
            if compression == "zstd", let problem = ZstdFrame.decompress(compressed, into: out) {
                throw fail("zstd chunk does not decompress: \(problem)")
            }
            records = UnsafeRawBufferPointer(out)
        default:
            throw fail("unsupported compression '\(compression)' (this reader supports none, lz4 and zstd)")
        }
        if crc != 0 {
            let got = slim_crc32(0, records.baseAddress, records.count)
            guard got == crc else { throw fail("uncompressed_crc mismatch: stored \(crc), computed \(got)") }
        }
        var pos = 0
        while pos < n {
            guard n - pos >= 9 else {
                throw MCAPError(
                    file: file, offset: pos, inChunkAt: chunkOffset, record: "record",
                    problem: "chunk ends inside a record header")
            }
            let op = records[pos]
            let length = UInt64(littleEndian: records.loadUnaligned(fromByteOffset: pos + 1, as: UInt64.self))
            let name = MCAPOpcode(rawValue: op).map { "\($0)" } ?? "opcode 0x\(String(op, radix: 16))"
            let start = pos
            guard length <= UInt64(n - pos - 9) else {
                throw MCAPError(
                    file: file, offset: start, inChunkAt: chunkOffset, record: name,
                    problem: "length \(length) runs past the end of the chunk")
            }
            let inner = UnsafeRawBufferPointer(rebasing: records[(pos + 9)..<(pos + 9 + Int(length))])
            pos += 9 + Int(length)
            let innerFail = MCAPErrorContext(file: file, offset: start, inChunkAt: chunkOffset, record: name)
            try register(op, inner, fail: innerFail)
            if try !body(op, inner, innerFail) { return false }
        }
        return true
    }

    /// Parses one record's content; nil for records the stream does not yield (message index).
    static func parse(_ op: UInt8, _ content: UnsafeRawBufferPointer, fail: MCAPErrorContext, keepData: Bool)
        throws(MCAPError) -> MCAPRecord?
    {
        var r = MCAPFieldReader(bytes: content, pos: 0, end: content.count, fail: fail)
        switch MCAPOpcode(rawValue: op) {
        case .header:
            return .header(profile: try r.string("profile"), library: try r.string("library"))
        case .footer:
            return .footer(
                summaryStart: try r.u64("summary_start"), summaryOffsetStart: try r.u64("summary_offset_start"),
                summaryCRC: try r.u32("summary_crc"))
        case .schema:
            let id = try r.u16("id")
            return .schema(
                MCAPSchema(
                    id: id, name: try r.string("name"), encoding: try r.string("encoding"), data: try r.bytes32("data"))
            )
        case .channel:
            let id = try r.u16("id")
            let schemaID = try r.u16("schema_id")
            return .channel(
                MCAPChannel(
                    id: id, schemaID: schemaID, topic: try r.string("topic"),
                    messageEncoding: try r.string("message_encoding"), metadata: try r.stringMap("metadata")))
        case .message:
            let c = try r.u16("channel_id")
            let s = try r.u32("sequence")
            let l = try r.u64("log_time")
            let p = try r.u64("publish_time")
            return .message(
                channelID: c, sequence: s, logTime: l, publishTime: p, data: keepData ? Array(content[r.pos...]) : [])
        case .chunkIndex:
            return .chunkIndex(
                MCAPChunkIndex(
                    messageStartTime: try r.u64("message_start_time"), messageEndTime: try r.u64("message_end_time"),
                    chunkStartOffset: try r.u64("chunk_start_offset"), chunkLength: try r.u64("chunk_length"),
                    messageIndexOffsets: try r.u16u64Map("message_index_offsets"),
                    messageIndexLength: try r.u64("message_index_length"),
                    compression: try r.string("compression"), compressedSize: try r.u64("compressed_size"),
                    uncompressedSize: try r.u64("uncompressed_size")))
        case .attachment:
            let l = try r.u64("log_time")
            let c = try r.u64("create_time")
            let name = try r.string("name")
            let media = try r.string("media_type")
            let n = try r.u64("data length")
            guard n <= UInt64(r.end - r.pos) else { throw fail("attachment data length \(n) exceeds the record") }
            let data = Array(try r.raw(Int(n), "data"))
            let crc = try r.u32("crc")
            if crc != 0 {
                // The CRC covers every field before it.
                let got = slim_crc32(0, content.baseAddress, r.pos - 4)
                guard got == crc else { throw fail("attachment crc mismatch: stored \(crc), computed \(got)") }
            }
            return .attachment(logTime: l, createTime: c, name: name, mediaType: media, data: data, crc: crc)
        case .attachmentIndex:
            return .attachmentIndex(
                offset: try r.u64("offset"), length: try r.u64("length"), logTime: try r.u64("log_time"),
                createTime: try r.u64("create_time"), dataSize: try r.u64("data_size"),
                name: try r.string("name"), mediaType: try r.string("media_type"))
        case .statistics:
            var s = MCAPStatistics()
            s.messageCount = try r.u64("message_count")
            s.schemaCount = try r.u16("schema_count")
            s.channelCount = try r.u32("channel_count")
            s.attachmentCount = try r.u32("attachment_count")
            s.metadataCount = try r.u32("metadata_count")
            s.chunkCount = try r.u32("chunk_count")
            s.messageStartTime = try r.u64("message_start_time")
            s.messageEndTime = try r.u64("message_end_time")
            s.channelMessageCounts = try r.u16u64Map("channel_message_counts")
            return .statistics(s)
        case .metadata:
            return .metadata(name: try r.string("name"), metadata: try r.stringMap("metadata"))
        case .metadataIndex:
            return .metadataIndex(offset: try r.u64("offset"), length: try r.u64("length"), name: try r.string("name"))
        case .summaryOffset:
            return .summaryOffset(
                groupOpcode: try r.u8("group_opcode"), groupStart: try r.u64("group_start"),
                groupLength: try r.u64("group_length"))
        case .dataEnd:
            return .dataEnd(dataSectionCRC: try r.u32("data_section_crc"))
        case .chunk, .messageIndex:
            return nil
        case nil:
            return .unknown(opcode: op)
        }
    }
}
