import Foundation
import Testing

@testable import SlimWire

/// Protocol/vectors, produced by the independent Python reference (Protocol/reference): every
/// valid vector must decode to the fields of its JSON and re-encode byte for byte; every invalid
/// one must be rejected with its reason code.
enum Vectors {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Protocol/vectors")

    static func names(_ folder: String) -> [String] {
        let files =
            (try? FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(folder).path)) ?? []
        return files.filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }.sorted()
    }

    static func bytes(_ folder: String, _ file: String) throws -> [UInt8] {
        [UInt8](try Data(contentsOf: root.appendingPathComponent(folder).appendingPathComponent(file)))
    }

    static func json<T: Decodable>(_ folder: String, _ name: String, as: T.Type) throws -> T {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return try d.decode(
            T.self, from: Data(contentsOf: root.appendingPathComponent(folder).appendingPathComponent(name + ".json")))
    }
}

struct ValidVector: Decodable {
    struct Detection: Decodable {
        var classId: UInt16
        var score: Float
        var center: [Float]
        var size: [Float]
        var yaw: Float
        var trackId: UInt32
    }
    struct Fields: Decodable {
        var agentId: String?, modelId: String?, modelHash: String?, sensorKind: UInt8?, widths: [UInt16]?,
            bitsMask: UInt8?
        var sequence: UInt64?, captureTimeNs: UInt64?, position: [Double]?, orientation: [Double]?, widthIndex: UInt8?,
            bits: UInt8?
        var channels: Int?, height: Int?, width: Int?, quantMode: UInt8?, scales: [Float]?, zeroPoints: [UInt8]?,
            maskMode: UInt8?
        var codec: UInt8?, rawLength: Int?
        var receiveTimeNs: UInt64?, bytesReceived: UInt32?, queueDelayNs: UInt32?
        var fusionTimeNs: UInt64?, recordSize: Int?, detections: [Detection]?
        var epoch: UInt32?, maxWidthIndex: UInt8?, maxBits: UInt8?, maxRateHz: Float?, reason: UInt8?
        var action: UInt8?, region: String?, endpoint: String?, serverKey: String?
    }
    var kind: String
    var fields: Fields
    var mask: [Int]?
    var values: [UInt8]?
    var canonical: Bool?
    var canonicalFile: String?
}

struct InvalidVector: Decodable {
    var error: String
    var description: String
}

private func unhex(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = s.makeIterator()
    while let a = it.next(), let b = it.next() { out.append(UInt8(String([a, b]), radix: 16)!) }
    return out
}

/// The message a vector's JSON describes. For frames the payload is built from mask and values
/// with codec none; LZ4 frames take the received payload (LZ4 output differs between
/// implementations) and are checked through their decoded values instead.
private func expectedMessage(_ v: ValidVector, received: Message) throws -> Message {
    let f = v.fields
    switch v.kind {
    case "Hello":
        return .hello(
            Hello(
                agentID: f.agentId!, modelID: f.modelId!, modelHash: unhex(f.modelHash!),
                sensorKind: Hello.SensorKind(rawValue: f.sensorKind!)!, widths: f.widths!, bitsMask: f.bitsMask!))
    case "Ack":
        return .ack(
            Ack(
                sequence: f.sequence!, receiveTimeNs: f.receiveTimeNs!, bytesReceived: f.bytesReceived!,
                queueDelayNs: f.queueDelayNs!))
    case "Control":
        return .control(
            Control(
                epoch: f.epoch!, maxWidthIndex: f.maxWidthIndex!, maxBits: f.maxBits!, maxRateHz: f.maxRateHz!,
                reason: f.reason!))
    case "Handover":
        return .handover(
            Handover(
                epoch: f.epoch!, action: Handover.Action(rawValue: f.action!)!, region: f.region!,
                endpoint: f.endpoint!, serverKey: unhex(f.serverKey!)))
    case "Boxes":
        return .boxes(
            Boxes(
                agentID: f.agentId!, sequence: f.sequence!, captureTimeNs: f.captureTimeNs!,
                position: SIMD3(f.position![0], f.position![1], f.position![2]),
                orientation: SIMD4(f.orientation![0], f.orientation![1], f.orientation![2], f.orientation![3]),
                detections: detections(f)))
    case "Result":
        let dets = detections(f)
        return .result(
            ResultMessage(
                sequence: f.sequence!, captureTimeNs: f.captureTimeNs!, fusionTimeNs: f.fusionTimeNs!, detections: dets)
        )
    case "FeatureFrame":
        let quant: FrameQuantization =
            f.quantMode == 0 ? .inline(scales: f.scales!, zeroPoints: f.zeroPoints!) : f.quantMode == 2 ? .codebook : .model
        var header = FeatureFrameHeader(
            agentID: f.agentId!, sequence: f.sequence!, captureTimeNs: f.captureTimeNs!,
            position: SIMD3(f.position![0], f.position![1], f.position![2]),
            orientation: SIMD4(f.orientation![0], f.orientation![1], f.orientation![2], f.orientation![3]),
            modelID: f.modelId!, widthIndex: f.widthIndex!, bits: f.bits!, channels: f.channels!, height: f.height!,
            width: f.width!,
            quant: quant, masked: f.maskMode == 1, codec: PayloadCodec(rawValue: f.codec!)!, rawLength: f.rawLength!)
        if header.codec == .lz4 {
            guard case .featureFrame(let got) = received else { throw VectorError.wrongKind }
            return .featureFrame(FeatureFrame(header: header, payload: got.payload))
        }
        let built = FeaturePayload.build(
            mask: v.mask.map { $0.map { $0 != 0 } }, values: v.values!, bits: Int(f.bits!), codec: .none)
        header.rawLength = built.rawLength
        return .featureFrame(FeatureFrame(header: header, payload: built.payload))
    default:
        throw VectorError.wrongKind
    }
}

private func detections(_ f: ValidVector.Fields) -> [Detection] {
    f.detections!.map {
        Detection(
            classID: $0.classId, score: $0.score, center: SIMD3($0.center[0], $0.center[1], $0.center[2]),
            size: SIMD3($0.size[0], $0.size[1], $0.size[2]), yaw: $0.yaw, trackID: $0.trackId)
    }
}

enum VectorError: Error { case wrongKind }

@Suite("Protocol test vectors")
struct VectorTests {
    @Test("there are vectors for every kind, bit depth and reason")
    func coverage() throws {
        let valid = Vectors.names("valid")
        let invalid = Vectors.names("invalid")
        #expect(valid.count >= 20)
        var kinds = Set<String>()
        var bits = Set<UInt8>()
        var masked = false
        var lz4 = false
        for n in valid {
            let v = try Vectors.json("valid", n, as: ValidVector.self)
            kinds.insert(v.kind)
            if let b = v.fields.bits { bits.insert(b) }
            masked = masked || v.fields.maskMode == 1
            lz4 = lz4 || v.fields.codec == 1
        }
        #expect(kinds == ["Hello", "FeatureFrame", "Ack", "Result", "Control", "Handover", "Boxes"])
        #expect(bits == Set(1...8))
        #expect(masked && lz4)
        let reasons = Set(try invalid.map { try Vectors.json("invalid", $0, as: InvalidVector.self).error })
        for r in [
            "truncated", "bad_magic", "unsupported_version", "over_limit", "length_mismatch", "crc_mismatch",
            "unknown_kind", "body_truncated", "field_out_of_range", "payload_size_mismatch", "codec_error",
        ] {
            #expect(reasons.contains(r), "no invalid vector for \(r)")
        }
    }

    @Test("valid vectors decode, match their JSON and re-encode byte for byte", arguments: Vectors.names("valid"))
    func valid(_ name: String) throws {
        let v = try Vectors.json("valid", name, as: ValidVector.self)
        let bytes = try Vectors.bytes("valid", name + ".bin")
        let canonical = try v.canonicalFile.map { try Vectors.bytes("valid", $0) } ?? bytes
        let decoded = try Message.decode(bytes)
        let expected = try expectedMessage(v, received: decoded)
        #expect(decoded == expected)
        #expect(decoded.encoded() == canonical, "re-encoding differs")
        #expect(expected.encoded() == canonical, "encoding from the JSON differs")
        if case .featureFrame(let frame) = decoded {
            let (mask, values) = try FeaturePayload.decode(frame)
            #expect(values == v.values!)
            #expect(mask == v.mask.map { $0.map { $0 != 0 } })
        }
    }

    @Test("invalid vectors are rejected with their reason", arguments: Vectors.names("invalid"))
    func invalid(_ name: String) throws {
        let v = try Vectors.json("invalid", name, as: InvalidVector.self)
        let bytes = try Vectors.bytes("invalid", name + ".bin")
        #expect(throws: WireError.self, "\(v.description)") { try Message.decode(bytes) }
        do {
            _ = try Message.decode(bytes)
        } catch {
            #expect(error.reason.rawValue == v.error, "\(v.description): got \(error)")
        }
        // The server's hot path (envelope, then the frame decoder) agrees with the full decoder.
        if let env = try? bytes.withUnsafeBytes({ try Envelope.open($0) }), env.kind == .featureFrame {
            let decoder = FeatureFrameDecoder()
            do {
                _ = try bytes.withUnsafeBytes { b in try decoder.decode(try Envelope.open(b), messageLength: b.count) }
                Issue.record("frame decoder accepted \(name)")
            } catch let e as WireError {
                #expect(e.reason.rawValue == v.error)
            }
        }
    }
}
