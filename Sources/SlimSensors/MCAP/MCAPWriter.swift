import CKernels
import Foundation
import SlimCore
import Glibc

/// How an MCAP writer compresses its chunks (`lz4`, what `ros2 bag record` writes; `zstd`, the
/// official `mcap` writers' default, smaller and slower; or none).
public enum MCAPCompression: String, Sendable, CaseIterable {
    case none, lz4, zstd
}

/// Writes MCAP files: chunked, LZ4- or zstd-compressed chunks with CRCs, a message index per
/// channel after each chunk, and a summary (schemas, channels, statistics, chunk indexes) with
/// summary offsets — what `ros2 bag record` writes and what Foxglove and the `mcap` tools read
/// fast. Not thread-safe.
///
/// Crash safety: every chunk goes to the file (unbuffered `write(2)`) as soon as it closes, and
/// a chunk closes when it reaches `chunkSize` or, with `flushInterval` set, when its first
/// message is that old (checked on every write and by `flushIfDue()`, which a caller with a
/// quiet stream calls from a timer). After `kill -9` the file lacks only the summary and the
/// open chunk: the official readers' recovery modes and SlimSplit's reader deliver every message
/// of the closed chunks. A write that fails (disk full, file gone) is thrown as an `MCAPError`
/// naming the file and the system's reason; the writer then stays failed (`failure`), keeps
/// what it wrote readable and refuses further writes with the same error.
public final class MCAPWriter {
    public let path: String
    private let fd: Int32
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
    /// Seconds after which an open chunk is written out even if not full (nil: only when full).
    public var flushInterval: Double?
    private var chunkOpenedNs: UInt64 = 0
    private var finished = false
    /// The write error that stopped this writer, if one did.
    public private(set) var failure: MCAPError?

    public init(
        path: String, profile: String = "ros2", chunkSize: Int = 1 << 20, compression: MCAPCompression = .lz4,
        flushInterval: Double? = nil
    ) throws(MCAPError) {
        self.path = path
        self.chunkSize = chunkSize
        self.compression = compression
        self.flushInterval = flushInterval
        fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw MCAPError(
                file: path, offset: 0, record: "file",
                problem: "cannot create the file: \(String(cString: strerror(errno)))")
        }
        var b = MCAPBuffer()
        b.bytes += mcapMagic
        b.record(.header) {
            $0.string(profile)
            $0.string("slimsplit")
        }
        try emit(b.bytes, data: true)
    }

    /// Registers a schema; returns its id.
    public func addSchema(name: String, encoding: String, data: [UInt8]) -> UInt16 {
        if let s = schemas.first(where: { $0.name == name && $0.encoding == encoding && $0.data == data }) {
            return s.id
        }
        let s = MCAPSchema(id: UInt16(schemas.count + 1), name: name, encoding: encoding, data: data)
        schemas.append(s)
        return s.id
    }

    /// Registers a channel; returns its id.
    public func addChannel(topic: String, schemaID: UInt16, messageEncoding: String, metadata: [String: String] = [:])
        -> UInt16
    {
        if let c = channels.first(where: { $0.topic == topic && $0.schemaID == schemaID }) { return c.id }
        let c = MCAPChannel(
            id: UInt16(channels.count + 1), schemaID: schemaID, topic: topic, messageEncoding: messageEncoding,
            metadata: metadata)
        channels.append(c)
        return c.id
    }

    public func write(channel id: UInt16, logTime: UInt64, publishTime: UInt64? = nil, data: [UInt8]) throws(MCAPError)
    {
        if let failure { throw failure }
        let c = channels[Int(id) - 1]
        if chunk.bytes.isEmpty { chunkOpenedNs = SystemClock.monotonicNs() }
        if c.schemaID != 0, !writtenInChunk.contains("s\(c.schemaID)") {
            let s = schemas[Int(c.schemaID) - 1]
            chunk.record(.schema) {
                $0.int(s.id)
                $0.string(s.name)
                $0.string(s.encoding)
                $0.bytes32(s.data)
            }
            writtenInChunk.insert("s\(c.schemaID)")
        }
        if !writtenInChunk.contains("c\(id)") {
            chunk.record(.channel) {
                $0.int(c.id)
                $0.int(c.schemaID)
                $0.string(c.topic)
                $0.string(c.messageEncoding)
                $0.stringMap(c.metadata)
            }
            writtenInChunk.insert("c\(id)")
        }
        let seq = sequences[id, default: 0]
        sequences[id] = seq &+ 1
        messageIndex[id, default: []].append((logTime, UInt64(chunk.bytes.count)))
        chunk.record(.message) { b in
            b.int(id)
            b.int(seq)
            b.int(logTime)
            b.int(publishTime ?? logTime)
            b.bytes += data
        }
        chunkStart = min(chunkStart, logTime)
        chunkEnd = max(chunkEnd, logTime)
        stats.messageCount += 1
        stats.channelMessageCounts[id, default: 0] += 1
        if stats.messageCount == 1 { stats.messageStartTime = logTime }
        stats.messageStartTime = min(stats.messageStartTime, logTime)
        stats.messageEndTime = max(stats.messageEndTime, logTime)
        if chunk.bytes.count >= chunkSize || due { try flushChunk() }
    }

    private var due: Bool {
        guard let flushInterval, !chunk.bytes.isEmpty else { return false }
        return Double(SystemClock.monotonicNs() &- chunkOpenedNs) / 1e9 >= flushInterval
    }

    /// Writes out the open chunk if `flushInterval` has passed since its first message.
    public func flushIfDue() throws(MCAPError) {
        if let failure { throw failure }
        if due { try flushChunk() }
    }

    /// Writes out the open chunk now.
    public func flush() throws(MCAPError) {
        if let failure { throw failure }
        try flushChunk()
    }

    private func flushChunk() throws(MCAPError) {
        guard !chunk.bytes.isEmpty else { return }
        let raw = chunk.bytes
        let crc = slim_crc32(0, raw, raw.count)
        // With `alwaysCompress` off, a chunk that cannot shrink by 5 % is stored uncompressed
        // instead, which every reader accepts.
        var payload = raw
        var compression = ""
        if self.compression != .none {
            let c = self.compression == .lz4 ? LZ4Frame.compress(raw) : ZstdFrame.compress(raw)
            if c.count < raw.count - raw.count / 20 || alwaysCompress {
                payload = c
                compression = self.compression.rawValue
            }
        }
        let start = offset
        var b = MCAPBuffer()
        b.record(.chunk) { c in
            c.int(chunkStart)
            c.int(chunkEnd)
            c.int(UInt64(raw.count))
            c.int(crc)
            c.string(compression)
            c.int(UInt64(payload.count))
            c.bytes += payload
        }
        let chunkLength = b.bytes.count
        var offsets: [UInt16: UInt64] = [:]
        for (id, entries) in messageIndex.sorted(by: { $0.key < $1.key }) {
            offsets[id] = UInt64(start + b.bytes.count)
            b.record(.messageIndex) { m in
                m.int(id)
                var e = MCAPBuffer()
                for (t, o) in entries {
                    e.int(t)
                    e.int(o)
                }
                m.bytes32(e.bytes)
            }
        }
        chunkIndexes.append(
            MCAPChunkIndex(
                messageStartTime: chunkStart, messageEndTime: chunkEnd, chunkStartOffset: UInt64(start),
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

    /// Flushes the last chunk and writes the data end, the summary and the footer, then closes
    /// the file. After a write failure it only closes the file (which stays readable up to the
    /// failed write) and throws that failure.
    public func finish() throws(MCAPError) {
        guard !finished else { return }
        finished = true
        defer { close(fd) }
        if let failure { throw failure }
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
        group(.schema) { b in
            for s in schemas {
                b.record(.schema) {
                    $0.int(s.id)
                    $0.string(s.name)
                    $0.string(s.encoding)
                    $0.bytes32(s.data)
                }
            }
        }
        group(.channel) { b in
            for c in channels {
                b.record(.channel) {
                    $0.int(c.id)
                    $0.int(c.schemaID)
                    $0.string(c.topic)
                    $0.string(c.messageEncoding)
                    $0.stringMap(c.metadata)
                }
            }
        }
        stats.schemaCount = UInt16(schemas.count)
        stats.channelCount = UInt32(channels.count)
        group(.statistics) { b in
            let s = stats
            b.record(.statistics) { r in
                r.int(s.messageCount)
                r.int(s.schemaCount)
                r.int(s.channelCount)
                r.int(s.attachmentCount)
                r.int(s.metadataCount)
                r.int(s.chunkCount)
                r.int(s.messageStartTime)
                r.int(s.messageEndTime)
                r.u16u64Map(s.channelMessageCounts)
            }
        }
        group(.chunkIndex) { b in
            for ci in chunkIndexes {
                b.record(.chunkIndex) { r in
                    r.int(ci.messageStartTime)
                    r.int(ci.messageEndTime)
                    r.int(ci.chunkStartOffset)
                    r.int(ci.chunkLength)
                    r.u16u64Map(ci.messageIndexOffsets)
                    r.int(ci.messageIndexLength)
                    r.string(ci.compression)
                    r.int(ci.compressedSize)
                    r.int(ci.uncompressedSize)
                }
            }
        }
        let summaryOffsetStart = summaryStart + sum.bytes.count
        for (op, start, length) in groups {
            sum.record(.summaryOffset) {
                $0.int(op.rawValue)
                $0.int(UInt64(start))
                $0.int(UInt64(length))
            }
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
    }

    private func emit(_ bytes: [UInt8], data: Bool) throws(MCAPError) {
        if data { dataCRC = slim_crc32(dataCRC, bytes, bytes.count) }
        var done = 0
        let problem: String? = bytes.withUnsafeBytes { b in
            while done < b.count {
                let n = Glibc.write(fd, b.baseAddress! + done, b.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    return "write failed after \(offset + done) bytes: \(String(cString: strerror(errno)))"
                }
                done += n
            }
            return nil
        }
        offset += done
        if let problem {
            let e = MCAPError(file: path, offset: offset, record: "file", problem: problem)
            failure = e
            throw e
        }
    }

    deinit { if !finished { try? finish() } }
}
