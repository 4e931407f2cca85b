import Foundation
import Testing

@testable import SlimSensors

/// The MCAP project's conformance corpus, read from ../shared/mcap-conformance beside the
/// project (never copied into it).
enum Conformance {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("shared/mcap-conformance")

    static var files: [String] {
        guard let e = FileManager.default.enumerator(atPath: root.path) else { return [] }
        return e.compactMap { $0 as? String }.filter { $0.hasSuffix(".mcap") }.sorted()
    }
}

/// A record as the corpus JSON writes it: integers as strings, bytes as lists of decimal strings.
func conformanceJSON(_ r: MCAPRecord) -> [String: Any]? {
    func s<T: BinaryInteger>(_ v: T) -> String { "\(v)" }
    func b(_ d: [UInt8]) -> [String] { d.map { "\($0)" } }
    func m(_ d: [UInt16: UInt64]) -> [String: String] {
        Dictionary(uniqueKeysWithValues: d.map { ("\($0.key)", "\($0.value)") })
    }
    switch r {
    case .header(let p, let l): return ["type": "Header", "fields": ["library": l, "profile": p]]
    case .footer(let a, let o, let c):
        return [
            "type": "Footer", "fields": ["summary_start": s(a), "summary_offset_start": s(o), "summary_crc": s(c)],
        ]
    case .schema(let x):
        return [
            "type": "Schema", "fields": ["id": s(x.id), "name": x.name, "encoding": x.encoding, "data": b(x.data)],
        ]
    case .channel(let c):
        return [
            "type": "Channel",
            "fields": [
                "id": s(c.id), "schema_id": s(c.schemaID), "topic": c.topic,
                "message_encoding": c.messageEncoding, "metadata": c.metadata,
            ],
        ]
    case .message(let c, let q, let l, let p, let d):
        return [
            "type": "Message",
            "fields": ["channel_id": s(c), "sequence": s(q), "log_time": s(l), "publish_time": s(p), "data": b(d)],
        ]
    case .chunkIndex(let c):
        return [
            "type": "ChunkIndex",
            "fields": [
                "message_start_time": s(c.messageStartTime), "message_end_time": s(c.messageEndTime),
                "chunk_start_offset": s(c.chunkStartOffset), "chunk_length": s(c.chunkLength),
                "message_index_offsets": m(c.messageIndexOffsets), "message_index_length": s(c.messageIndexLength),
                "compression": c.compression, "compressed_size": s(c.compressedSize),
                "uncompressed_size": s(c.uncompressedSize),
            ],
        ]
    case .attachment(let l, let c, let n, let t, let d, _):
        return [
            "type": "Attachment",
            "fields": ["log_time": s(l), "create_time": s(c), "name": n, "media_type": t, "data": b(d)],
        ]
    case .attachmentIndex(let o, let len, let l, let c, let ds, let n, let t):
        return [
            "type": "AttachmentIndex",
            "fields": [
                "offset": s(o), "length": s(len), "log_time": s(l), "create_time": s(c),
                "data_size": s(ds), "name": n, "media_type": t,
            ],
        ]
    case .statistics(let x):
        return [
            "type": "Statistics",
            "fields": [
                "message_count": s(x.messageCount), "schema_count": s(x.schemaCount),
                "channel_count": s(x.channelCount),
                "attachment_count": s(x.attachmentCount), "metadata_count": s(x.metadataCount),
                "chunk_count": s(x.chunkCount),
                "message_start_time": s(x.messageStartTime), "message_end_time": s(x.messageEndTime),
                "channel_message_counts": m(x.channelMessageCounts),
            ],
        ]
    case .metadata(let n, let md): return ["type": "Metadata", "fields": ["name": n, "metadata": md]]
    case .metadataIndex(let o, let l, let n):
        return ["type": "MetadataIndex", "fields": ["offset": s(o), "length": s(l), "name": n]]
    case .summaryOffset(let op, let st, let l):
        return [
            "type": "SummaryOffset", "fields": ["group_opcode": s(op), "group_start": s(st), "group_length": s(l)],
        ]
    case .dataEnd(let c): return ["type": "DataEnd", "fields": ["data_section_crc": s(c)]]
    case .unknown: return nil
    }
}

func canonical(_ v: Any) -> String {
    String(decoding: try! JSONSerialization.data(withJSONObject: v, options: [.sortedKeys]), as: UTF8.self)
}

@Suite("MCAP conformance corpus")
struct MCAPConformanceTests {
    @Test("the reader yields exactly the expected records of every corpus file")
    func corpus() throws {
        let files = Conformance.files
        guard !files.isEmpty else {
            print("SKIP: \(Conformance.root.path) is absent; the MCAP conformance corpus was not read")
            return
        }
        var failures: [String] = []
        for f in files {
            let expectedDoc =
                try JSONSerialization.jsonObject(
                    with: Data(
                        contentsOf: Conformance.root.appendingPathComponent(
                            String(f.dropLast(5)) + ".json"))) as! [String: Any]
            let expected = (expectedDoc["records"] as! [[String: Any]]).map { r -> String in
                let fields = Dictionary(
                    uniqueKeysWithValues: (r["fields"] as! [[Any]]).map { ($0[0] as! String, $0[1]) })
                return canonical(["type": r["type"]!, "fields": fields])
            }
            var got: [String] = []
            do {
                try MCAPReader(path: Conformance.root.appendingPathComponent(f).path).forEachRecord { r in
                    if let j = conformanceJSON(r) { got.append(canonical(j)) }
                    return true
                }
            } catch {
                failures.append("\(f): \(error)")
                continue
            }
            if got != expected {
                let i =
                    (0..<min(got.count, expected.count)).first { got[$0] != expected[$0] }
                    ?? min(got.count, expected.count)
                failures.append(
                    "\(f): record \(i) differs: got \(i < got.count ? got[i] : "nothing"), expected \(i < expected.count ? expected[i] : "nothing")"
                )
            }
        }
        #expect(
            failures.isEmpty, "\(failures.count) of \(files.count) files: \(failures.prefix(5).joined(separator: "\n"))"
        )
        #expect(files.count > 200)
    }
}

@Suite("MCAP writer")
struct MCAPWriterTests {
    @Test("what the writer writes, the reader reads back with every CRC checked")
    func roundTrip() throws {
        let path = NSTemporaryDirectory() + "slimsplit-writer-\(getpid()).mcap"
        let w = try MCAPWriter(path: path, chunkSize: 1000)
        let s = w.addSchema(name: "test/msg/Blob", encoding: "ros2msg", data: Array("uint8[] data".utf8))
        let a = w.addChannel(topic: "/a", schemaID: s, messageEncoding: "cdr")
        let b = w.addChannel(topic: "/b", schemaID: s, messageEncoding: "cdr")
        for i in 0..<100 {
            try w.write(
                channel: i % 3 == 0 ? b : a, logTime: UInt64(1000 + i), data: [UInt8](repeating: UInt8(i), count: 100))
        }
        try w.finish()
        let r = try MCAPReader(path: path)
        var n = 0
        var times: [UInt64] = []
        var stats: MCAPStatistics?
        var chunkIndexes = 0
        try r.forEachRecord { rec in
            switch rec {
            case .message(_, _, let t, _, let d):
                n += 1
                times.append(t)
                #expect(d.count == 100)
            case .statistics(let s): stats = s
            case .chunkIndex: chunkIndexes += 1
            default: break
            }
            return true
        }
        #expect(n == 100)
        #expect(times == (0..<100).map { UInt64(1000 + $0) })
        #expect(stats?.messageCount == 100)
        #expect(stats?.channelMessageCounts[b] == 34)
        #expect(chunkIndexes == Int(stats?.chunkCount ?? 0) && chunkIndexes > 5)
        try FileManager.default.removeItem(atPath: path)
    }
}
