import ArgumentParser
import CZeroMQ
import Foundation
import SlimPipeline
import SlimSensors
import SlimTransport
import SlimWire

/// encode → LZ4 → ZeroMQ (loopback TCP) → decode, against raw libzmq moving the same bytes
/// with no framing, in the same process and run.
struct WireBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wire",
        abstract: "Frames/s and MB/s of the wire path against raw libzmq, at 4 KiB, 64 KiB and 1 MiB.",
        discussion: """
            Both paths use a DEALER → ROUTER pair over tcp://127.0.0.1 with Curve off, a sending thread and a
            receiving thread. SlimSplit's path packs an 8-bit C×H×W feature map, LZ4-compresses it (only when
            that shrinks it), adds the header and CRC-32C, sends it zero-copy, and on receipt checks the CRC and
            every field, decompresses and unpacks it. Raw libzmq sends the uncompressed bytes with zmq_send and
            receives them with zmq_msg_recv. MB/s counts uncompressed feature bytes. Contents: `features`
            (a sparse BEV-like map, 30 % of cells occupied), with LZ4 and without, and `random`
            (incompressible; the encoder soon stops trying LZ4 on it). Loopback moves bytes at memory speed, so
            here LZ4 only costs time; on a radio link it saves far more than it costs.
            """)

    @Flag(help: "Print JSON only.")
    var json = false

    @Option(help: "Seconds per measurement (each path, each size, each content).")
    var seconds: Double = 1.0

    @Option(help: "Repetitions; the median is reported.")
    var repeats: Int = 3

    struct Case {
        let name: String
        let c: Int
        let h: Int
        let w: Int
    }

    func run() throws {
        let cases = [
            Case(name: "4KiB", c: 16, h: 16, w: 16), Case(name: "64KiB", c: 64, h: 32, w: 32),
            Case(name: "1MiB", c: 64, h: 128, w: 128),
        ]
        var results: [[String: Any]] = []
        for (content, lz4) in [("features", true), ("features", false), ("random", true)] {
            for cs in cases {
                var slim: [Measure] = []
                var raw: [Measure] = []
                for _ in 0..<repeats {
                    raw.append(try measure(cs, content: content, lz4: lz4, framed: false))
                    slim.append(try measure(cs, content: content, lz4: lz4, framed: true))
                }
                let s = median(slim)
                let r = median(raw)
                let payload = cs.c * cs.h * cs.w
                let (encodeUs, decodeUs) = try stageTimes(cs, content: content, lz4: lz4)
                let entry: [String: Any] = [
                    "payload": cs.name, "payload_bytes": payload, "content": content,
                    "codec_requested": lz4 ? "lz4" : "none",
                    "slimsplit": [
                        "frames_per_s": s.fps.rounded(), "mb_per_s": (s.fps * Double(payload) / 1e6).rounded(),
                        "wire_bytes_per_frame": s.wireBytes,
                        "encode_us": (encodeUs * 10).rounded() / 10, "decode_us": (decodeUs * 10).rounded() / 10,
                    ],
                    "raw_zmq": [
                        "frames_per_s": r.fps.rounded(), "mb_per_s": (r.fps * Double(payload) / 1e6).rounded(),
                    ],
                    "ratio_vs_raw_zmq": (s.fps / r.fps * 1000).rounded() / 1000,
                ]
                results.append(entry)
                if !json {
                    FileHandle.standardError.write(
                        Data(
                            ("\(content) \(lz4 ? "lz4" : "none") \(cs.name): slimsplit \(Int(s.fps)) fps, raw \(Int(r.fps)) fps, ratio \(String(format: "%.3f", s.fps / r.fps)); encode \(String(format: "%.1f", encodeUs)) µs, decode \(String(format: "%.1f", decodeUs)) µs\n")
                                .utf8))
                }
            }
        }
        let doc: [String: Any] = [
            "benchmark": "wire", "transport": "tcp://127.0.0.1, DEALER->ROUTER, Curve off",
            "crc32c_hardware": CRC32C.isHardwareAccelerated, "seconds_per_point": seconds, "repeats": repeats,
            "results": results,
        ]
        let data = try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys])
        print(String(decoding: data, as: UTF8.self))
    }

    struct Measure {
        var fps: Double
        var wireBytes: Int
    }

    func makeFeatures(_ cs: Case, content: String) -> SyntheticFeatures {
        var features = SyntheticFeatures(channels: cs.c, height: cs.h, width: cs.w, bits: 8, occupancy: 0.3, seed: 7)
        if content == "random" {
            var rng = SimRandom(state: 9)
            for i in features.dense.indices { features.dense[i] = UInt8(truncatingIfNeeded: rng.next()) }
        }
        return features
    }

    /// Single-thread time of encode (pack, LZ4, header, CRC) and decode (CRC, checks, LZ4,
    /// unpack) per frame, in µs: where the framed path spends its time.
    func stageTimes(_ cs: Case, content: String, lz4: Bool) throws -> (Double, Double) {
        let features = makeFeatures(cs, content: content)
        let header = features.header(agentID: "bench", widthIndex: 3, masked: false, lz4: lz4)
        var out = [UInt8](repeating: 0, count: FeatureFrameEncoder.maxEncodedLength(header))
        let encoder = FeatureFrameEncoder()
        let decoder = FeatureFrameDecoder()
        let iterations = max(20, 50_000_000 / (cs.c * cs.h * cs.w))
        var length = 0
        let t0 = SystemClock.monotonicNs()
        features.dense.withUnsafeBufferPointer { d in
            out.withUnsafeMutableBytes { o in
                for _ in 0..<iterations { length = encoder.encode(header, dense: d, mask: nil, into: o).length }
            }
        }
        let t1 = SystemClock.monotonicNs()
        try out.withUnsafeBytes { o in
            let m = UnsafeRawBufferPointer(rebasing: o[0..<length])
            for _ in 0..<iterations { _ = try decoder.decode(try Envelope.open(m), messageLength: length) }
        }
        let t2 = SystemClock.monotonicNs()
        return (Double(t1 - t0) / 1e3 / Double(iterations), Double(t2 - t1) / 1e3 / Double(iterations))
    }

    func median(_ m: [Measure]) -> Measure { m.sorted { $0.fps < $1.fps }[m.count / 2] }

    /// One run: a sender thread pushes frames for `seconds`; the receiver counts what it decoded.
    func measure(_ cs: Case, content: String, lz4: Bool, framed: Bool) throws -> Measure {
        let ctx = zmq_ctx_new()!
        defer { zmq_ctx_term(ctx) }
        let router = zmq_socket(ctx, ZMQ_ROUTER)!
        let dealer = zmq_socket(ctx, ZMQ_DEALER)!
        var zero: Int32 = 0
        zmq_setsockopt(router, ZMQ_LINGER, &zero, 4)
        zmq_setsockopt(dealer, ZMQ_LINGER, &zero, 4)
        guard zmq_bind(router, "tcp://127.0.0.1:0") == 0 else { throw ZMQError("zmq_bind") }
        var buf = [CChar](repeating: 0, count: 256)
        var len = buf.count
        zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, &buf, &len)
        guard zmq_connect(dealer, cString(buf)) == 0 else { throw ZMQError("zmq_connect") }

        let features = makeFeatures(cs, content: content)
        let header = features.header(agentID: "bench", widthIndex: 3, masked: false, lz4: lz4)
        let pool = SendBufferPool(count: 16, bufferSize: FeatureFrameEncoder.maxEncodedLength(header))
        let decoder = FeatureFrameDecoder()
        let dense = features.dense
        let stopAt = SystemClock.monotonicNs() + UInt64(seconds * 1e9)
        let sentBox = Locked(0)
        let wireBox = Locked(0)

        // Sender: a plain thread owning the dealer.
        let dealerBox = UncheckedSendable(dealer)
        let sender = Thread {
            let dealer = dealerBox.value
            let encoder = FeatureFrameEncoder()
            var n = 0
            var wire = 0
            dense.withUnsafeBufferPointer { d in
                while SystemClock.monotonicNs() < stopAt {
                    if framed {
                        guard let b = pool.take() else {
                            sched_yield()
                            continue
                        }
                        var h = header
                        h.sequence = UInt64(n + 1)
                        let (length, _) = encoder.encode(h, dense: d, mask: nil, into: b.bytes)
                        wire = length
                        var msg = b.zmqMessage(length: length)
                        guard zmq_msg_send(&msg, dealer, 0) >= 0 else {
                            zmq_msg_close(&msg)
                            break
                        }
                    } else {
                        guard zmq_send(dealer, d.baseAddress, d.count, 0) >= 0 else { break }
                    }
                    n += 1
                }
            }
            // An empty message marks the end.
            zmq_send(dealer, nil, 0, 0)
            sentBox.withLock { $0 = n }
            wireBox.withLock { $0 = wire }
        }
        let t0 = SystemClock.monotonicNs()
        sender.start()
        var received = 0
        var id = zmq_msg_t()
        var msg = zmq_msg_t()
        zmq_msg_init(&id)
        zmq_msg_init(&msg)
        while true {
            guard zmq_msg_recv(&id, router, 0) >= 0, zmq_msg_recv(&msg, router, 0) >= 0 else { break }
            let size = zmq_msg_size(&msg)
            if size == 0 { break }
            let bytes = UnsafeRawBufferPointer(start: zmq_msg_data(&msg), count: size)
            if framed {
                do {
                    let env = try Envelope.open(bytes)
                    _ = try decoder.decode(env, messageLength: size)
                } catch {
                    throw ValidationError("decode failed in benchmark: \(error)")
                }
            }
            received += 1
        }
        let elapsed = Double(SystemClock.monotonicNs() - t0) / 1e9
        zmq_msg_close(&id)
        zmq_msg_close(&msg)
        while sentBox.value == 0 && received > 0 && !sender.isFinished { usleep(1000) }
        zmq_close(dealer)
        zmq_close(router)
        return Measure(fps: Double(received) / elapsed, wireBytes: framed ? wireBox.value : cs.c * cs.h * cs.w)
    }
}
