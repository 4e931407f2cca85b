import CKernels
import Foundation

/// How an MCAP writer compresses its chunks (`lz4`, what `ros2 bag record` writes; `zstd`, the
/// official `mcap` writers' default, smaller and slower; or none).
public enum MCAPCompression: String, Sendable, CaseIterable {
    case none, lz4, zstd
}

/// Writes MCAP files: chunked, LZ4- or zstd-compressed chunks with CRCs, a message index per
/// channel after each chunk, and a summary (schemas, channels, statistics, chunk indexes) with
/// summary offsets — what `ros2 bag record` writes and what Foxglove and the `mcap` tools read
/// fast. Not thread-safe.
public final class MCAPWriter {
    public let path: String
    private let handle: FileHandle
    private var offset = 0
    private var dataCRC: UInt32 = 0
    private var schemas: [MCAPSchema] = []
    private var channels: [MCAPChannel] = []
    private var writtenInChunk = Set<String>()  // "s<id>" / "c<id>" already in the current chunk
    private var chunk = MCAPBuffer()
    private var chunkStart: UInt64 = .max, chunkEnd: UInt64 = 0
    private var chunkIndexes: [MCAPChunkIndex] = []
    private var messageIndex: [UInt16: [(UInt64, UInt64)]] = [:]
    private var stats = MCAPStatistics()
    private var sequences: [UInt16: UInt32] = [:]
    public let chunkSize: Int
    public let compression: MCAPCompression
    /// Compress every chunk even when it saves nothing (the recording profile's LZ4 everywhere);
    /// off, a chunk that does not shrink by 5 % (float point clouds often) is stored uncompressed.
    public var alwaysCompress = true
    private var finished = false

    public init(path: String, profile: String = "ros2", chunkSize: Int = 1 << 20, compression: MCAPCompression = .lz4) throws {
        self.path = path
        self.chunkSize = chunkSize
        self.compression = compression
        guard FileManager.default.createFile(atPath: path, contents: nil),
              let h = FileHandle(forWritingAtPath: path) else {
            throw MCAPError(file: path, offset: 0, record: "file", problem: "cannot create the file")
        }
        handle = h
        var b = MCAPBuffer()
        b.bytes += mcapMagic
        b.record(.header) { $0.string(profile); $0.string("slimsplit") }
        try emit(b.bytes, data: true)
    }

    /// Registers a schema; returns its id.
    public func addSchema(name: String, encoding: String, data: [UInt8]) -> UInt16 {
        if let s = schemas.first(where: { $0.name == name && $0.encoding == encoding && $0.data == data }) { return s.id }
        let s = MCAPSchema(id: UInt16(schemas.count + 1), name: name, encoding: encoding, data: data)
        schemas.append(s)
        return s.id
    }

    /// Registers a channel; returns its id.
    public func addChannel(topic: String, schemaID: UInt16, messageEncoding: String, metadata: [String: String] = [:]) -> UInt16 {
        if let c = channels.first(where: { $0.topic == topic && $0.schemaID == schemaID }) { return c.id }
        let c = MCAPChannel(id: UInt16(channels.count + 1), schemaID: schemaID, topic: topic, messageEncoding: messageEncoding, metadata: metadata)
        channels.append(c)
        return c.id
    }

    public func write(channel id: UInt16, logTime: UInt64, publishTime: UInt64? = nil, data: [UInt8]) throws {
        let c = channels[Int(id) - 1]
        if c.schemaID != 0, !writtenInChunk.contains("s\(c.schemaID)") {
            let s = schemas[Int(c.schemaID) - 1]
            chunk.record(.schema) { $0.int(s.id); $0.string(s.name); $0.string(s.encoding); $0.bytes32(s.data) }
            writtenInChunk.insert("s\(c.schemaID)")
        }
        if !writtenInChunk.contains("c\(id)") {
            chunk.record(.channel) { $0.int(c.id); $0.int(c.schemaID); $0.string(c.topic); $0.string(c.messageEncoding); $0.stringMap(c.metadata) }
            writtenInChunk.insert("c\(id)")
        }
        let seq = sequences[id, default: 0]
        sequences[id] = seq &+ 1
        messageIndex[id, default: []].append((logTime, UInt64(chunk.bytes.count)))
        chunk.record(.message) { b in
            b.int(id); b.int(seq); b.int(logTime); b.int(publishTime ?? logTime)
            b.bytes += data
        }
        chunkStart = min(chunkStart, logTime)
        chunkEnd = max(chunkEnd, logTime)
        stats.messageCount += 1
        stats.channelMessageCounts[id, default: 0] += 1
        if stats.messageCount == 1 { stats.messageStartTime = logTime }
        stats.messageStartTime = min(stats.messageStartTime, logTime)
        stats.messageEndTime = max(stats.messageEndTime, logTime)
        if chunk.bytes.count >= chunkSize { try flushChunk() }
    }

    private func flushChunk() throws {
        guard !chunk.bytes.isEmpty else { return }
        let raw = chunk.bytes
        let crc = slim_crc32(0, raw, raw.count)
        // With `alwaysCompress` off, a chunk that cannot shrink by 5 % is stored uncompressed
        // instead, which every reader accepts.
        var payload = raw
        var compression = ""
        if self.compression != .none {
            let c = self.compression == .lz4 ? LZ4Frame.compress(raw) : ZstdFrame.compress(raw)
            if c.count < raw.count - raw.count / 20 || alwaysCompress { payload = c; compression = self.compression.rawValue }
        }
        let start = offset
        var b = MCAPBuffer()
        b.record(.chunk) { c in
            c.int(chunkStart); c.int(chunkEnd); c.int(UInt64(raw.count)); c.int(crc)
            c.string(compression)
            c.int(UInt64(payload.count)); c.bytes += payload
        }
        let chunkLength = b.bytes.count
        var offsets: [UInt16: UInt64] = [:]
        for (id, entries) in messageIndex.sorted(by: { $0.key < $1.key }) {
            offsets[id] = UInt64(start + b.bytes.count)
            b.record(.messageIndex) { m in
                m.int(id)
                var e = MCAPBuffer()
                for (t, o) in entries { e.int(t); e.int(o) }
                m.bytes32(e.bytes)
            }
        }
        chunkIndexes.append(MCAPChunkIndex(messageStartTime: chunkStart, messageEndTime: chunkEnd, chunkStartOffset: UInt64(start),
                                           chunkLength: UInt64(chunkLength), messageIndexOffsets: offsets,
                                           messageIndexLength: UInt64(b.bytes.count - chunkLength),
                                           compression: compression, compressedSize: UInt64(payload.count),
                                           uncompressedSize: UInt64(raw.count)))
        try emit(b.bytes, data: true)
        stats.chunkCount += 1
        chunk = MCAPBuffer()
        writtenInChunk.removeAll()
        messageIndex.removeAll()
        chunkStart = .max
        chunkEnd = 0
    }

    /// Flushes the last chunk and writes the data end, the summary and the footer.
    public func finish() throws {
        guard !finished else { return }
        finished = true
        try flushChunk()
        var end = MCAPBuffer()
        end.record(.dataEnd) { $0.int(dataCRC) }
        try emit(end.bytes, data: false)
        let summaryStart = offset
        var sum = MCAPBuffer()
        var groups: [(MCAPOpcode, Int, Int)] = []
        func group(_ op: MCAPOpcode, _ body: (inout MCAPBuffer) -> Void) {
            let s = sum.bytes.count
            body(&sum)
            if sum.bytes.count > s { groups.append((op, summaryStart + s, sum.bytes.count - s)) }
        }
        group(.schema) { b in for s in schemas { b.record(.schema) { $0.int(s.id); $0.string(s.name); $0.string(s.encoding); $0.bytes32(s.data) } } }
        group(.channel) { b in
            for c in channels { b.record(.channel) { $0.int(c.id); $0.int(c.schemaID); $0.string(c.topic); $0.string(c.messageEncoding); $0.stringMap(c.metadata) } }
        }
        stats.schemaCount = UInt16(schemas.count)
        stats.channelCount = UInt32(channels.count)
        group(.statistics) { b in
            let s = stats
            b.record(.statistics) { r in
                r.int(s.messageCount); r.int(s.schemaCount); r.int(s.channelCount); r.int(s.attachmentCount); r.int(s.metadataCount)
                r.int(s.chunkCount); r.int(s.messageStartTime); r.int(s.messageEndTime); r.u16u64Map(s.channelMessageCounts)
            }
        }
        group(.chunkIndex) { b in
            for ci in chunkIndexes {
                b.record(.chunkIndex) { r in
                    r.int(ci.messageStartTime); r.int(ci.messageEndTime); r.int(ci.chunkStartOffset); r.int(ci.chunkLength)
                    r.u16u64Map(ci.messageIndexOffsets); r.int(ci.messageIndexLength); r.string(ci.compression)
                    r.int(ci.compressedSize); r.int(ci.uncompressedSize)
                }
            }
        }
        let summaryOffsetStart = summaryStart + sum.bytes.count
        for (op, start, length) in groups {
            sum.record(.summaryOffset) { $0.int(op.rawValue); $0.int(UInt64(start)); $0.int(UInt64(length)) }
        }
        // Footer: the summary CRC covers the summary and the footer up to the CRC field.
        var footerHead = MCAPBuffer()
        footerHead.bytes.append(MCAPOpcode.footer.rawValue)
        footerHead.int(UInt64(20))
        footerHead.int(UInt64(summaryStart))
        footerHead.int(UInt64(summaryOffsetStart))
        let covered = sum.bytes + footerHead.bytes
        let crc = slim_crc32(0, covered, covered.count)
        var tail = MCAPBuffer()
        tail.bytes = covered
        tail.int(crc)
        tail.bytes += mcapMagic
        try emit(tail.bytes, data: false)
        try handle.close()
    }

    private func emit(_ bytes: [UInt8], data: Bool) throws {
        if data { dataCRC = slim_crc32(dataCRC, bytes, bytes.count) }
        try handle.write(contentsOf: bytes)
        offset += bytes.count
    }

    deinit { if !finished { try? finish() } }
}
