import Glibc
import SlimSensors

// The MCAP reader (records, chunks in every compression, message indexes, summary CRCs).
// Invariants: reading the input cut short delivers a prefix of what reading all of it delivers
// (nothing invented from a truncated file); a file that reads cleanly, written again by
// SlimSplit's writer, reads back as the same messages.

private struct Delivered: Equatable {
    var topic: String
    var schema: String?
    var schemaEncoding: String?
    var schemaData: [UInt8]?
    var logTime: UInt64
    var publishTime: UInt64
    var data: [UInt8]

    init(_ m: MCAPMessageView) {
        topic = m.channel.topic
        schema = m.schema?.name
        schemaEncoding = m.schema?.encoding
        schemaData = m.schema?.data
        logTime = m.logTime
        publishTime = m.publishTime
        data = Array(m.data)
    }
}

private func read(_ bytes: UnsafeRawBufferPointer) -> (messages: [Delivered], failed: Bool) {
    var out: [Delivered] = []
    do {
        let r = try MCAPReader(bytes: bytes, name: "fuzz.mcap")
        r.chunkLimit = 1 << 22  // keep each run fast; the limit itself is what is checked
        do {
            try r.forEachMessage {
                out.append(Delivered($0))
                return true
            }
        } catch {
            return (out, true)
        }
        // The record stream must agree with the message stream on a clean file.
        var records = 0
        try r.forEachRecord {
            if case .message = $0 { records += 1 }
            return true
        }
        invariant(records == out.count, "forEachRecord saw \(records) messages, forEachMessage \(out.count)")
        return (out, false)
    } catch {
        return (out, true)
    }
}

private let scratch = "/tmp/slimfuzz-\(getpid()).mcap"

func fuzzMCAP(_ input: UnsafeRawBufferPointer) {
    let whole = read(input)
    if input.count > 9 {
        // A cut point that depends on the input, so that mutations move it.
        var h: UInt32 = 2_166_136_261
        for b in input.prefix(64) { h = (h ^ UInt32(b)) &* 16_777_619 }
        let cut = 8 + Int(h % UInt32(input.count - 8))
        let part = read(UnsafeRawBufferPointer(rebasing: input[..<cut]))
        invariant(
            part.messages.count <= whole.messages.count && zip(part.messages, whole.messages).allSatisfy { $0 == $1 },
            "the first \(cut) bytes delivered messages that the whole file does not")
    }
    guard !whole.failed, !whole.messages.isEmpty else { return }
    let compression = MCAPCompression.allCases[Int(input[input.count - 1]) % 3]
    do {
        let w = try MCAPWriter(path: scratch, chunkSize: 1 + Int(input[9]) * 16, compression: compression)
        var ids: [String: UInt16] = [:]
        for m in whole.messages {
            let sid = m.schema.map { w.addSchema(name: $0, encoding: m.schemaEncoding!, data: m.schemaData!) } ?? 0
            let key = "\(m.topic)\u{0}\(sid)"
            let id =
                ids[key]
                ?? {
                    let c = w.addChannel(topic: m.topic, schemaID: sid, messageEncoding: "cdr")
                    ids[key] = c
                    return c
                }()
            try w.write(channel: id, logTime: m.logTime, publishTime: m.publishTime, data: m.data)
        }
        try w.finish()
    } catch {
        fatalError("writing a clean file's messages again failed: \(error)")
    }
    guard let again = try? MCAPReader(path: scratch) else { fatalError("the rewritten file does not open") }
    var back: [Delivered] = []
    do {
        try again.forEachMessage {
            back.append(Delivered($0))
            return true
        }
    } catch {
        fatalError("the rewritten file does not read: \(error)")
    }
    if back != whole.messages {
        let i =
            zip(back, whole.messages).enumerated().first { $0.element.0 != $0.element.1 }?.offset
            ?? min(back.count, whole.messages.count)
        fatalError(
            "a rewritten file reads back different messages: \(back.count) vs \(whole.messages.count), first at \(i): "
                + "\(i < back.count ? "\(back[i])" : "-") vs \(i < whole.messages.count ? "\(whole.messages[i])" : "-")"
        )
    }
    // Kept only when a check above fails (the process stops there, the file stays for inspection).
    unlink(scratch)
}
