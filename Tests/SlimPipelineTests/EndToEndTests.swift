import Foundation
import Logging
import SlimAgent
import SlimEngine
import SlimPerception
import SlimSensors
import Testing

@testable import SlimPipeline

let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()
let modelPath = root.appendingPathComponent("Models/slimsplit-bev.safetensors").path
let samplePath = root.appendingPathComponent("Tests/Fixtures/sample.mcap").path
let deepModelPath = root.appendingPathComponent("Models/slimsplit-deep.safetensors").path

@Suite("End to end: agents and the fusion server over ZeroMQ on the committed sample")
struct EndToEndTests {
    @Test("detections come back to every agent for every frame, identical to the offline pipeline's")
    func sessionMatchesOffline() async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .error
        var config = CooperativeSession.Config(recording: samplePath, model: modelPath)
        config.agents = ["car_1", "rsu_1"]
        config.maxFrames = 6
        config.bits = 4
        let session = CooperativeSession(config)
        try await session.run(logger: logger)
        #expect(session.rejected == 0)
        // Every pass's CPU time is accounted (all fusion threads' own clocks): nonzero, and no
        // more than its threads could spend in its wall time.
        #expect(!session.fuseMs.isEmpty && session.fuseCPUMs.count == session.fuseMs.count)
        for (wall, cpu) in zip(session.fuseMs, session.fuseCPUMs) {
            #expect(cpu > 0 && cpu <= wall * Double(session.fusionThreads) + 1, "pass: wall \(wall) ms, CPU \(cpu) ms")
        }

        // Offline: the same encoders, quantization and detector, no sockets.
        let rec = try RecordingFrames(path: samplePath)
        let frames = Array(
            rec.frames.filter { f in config.agents!.allSatisfy { f.agents[$0]?.points.isEmpty == false } }.prefix(6))
        let detector = try CooperativeDetector(Safetensors(contentsOf: modelPath))
        let encoders = try config.agents!.map { _ in try EdgeEncoder(modelFile: modelPath) }
        for e in encoders { e.bits = 4 }
        let feats = config.agents!.map { _ in FloatTensor(height: 32, width: 32, channels: 64) }
        var compared = 0
        for (fi, f) in frames.enumerated() {
            var inputs: [CooperativeDetector.AgentInput] = []
            for (k, a) in config.agents!.enumerated() {
                let af = f.agents[a]!
                let pose = af.measuredPose ?? af.pose!
                let shape = af.points.withUnsafeBufferPointer {
                    encoders[k].encode($0, sensorHeight: Float(af.pose!.position.z))
                }
                encoders[k].dequantized(
                    into: feats[k], channels: shape.channels, height: shape.height, width: shape.width,
                    masked: shape.masked)
                inputs.append(
                    CooperativeDetector.AgentInput(
                        features: feats[k], position: SIMD2(Float(pose.position.x), Float(pose.position.y)),
                        yaw: Float(pose.yaw)))
            }
            for (k, a) in config.agents!.enumerated() {
                let offline = detector.detect(ego: k, agents: inputs)
                let online = session.reports[a]!.detections[fi]
                #expect(online != nil, "no Result for \(a) frame \(fi)")
                guard let online else { continue }
                #expect(online.count == offline.count, "\(a) frame \(fi): \(online.count) vs \(offline.count) boxes")
                for (x, y) in zip(online, offline) {
                    // The wire carries float32 centre, size, yaw and score: equal to the offline values.
                    #expect(
                        abs(x.x - y.x) < 1e-4 && abs(x.y - y.y) < 1e-4 && abs(x.yaw - y.yaw) < 1e-5
                            && abs(x.score - y.score) < 1e-6)
                }
                compared += 1
            }
        }
        #expect(compared == 12)
        for a in config.agents! {
            #expect(session.reports[a]!.results == 6)
            #expect(session.reports[a]!.bytes > 0)
        }
    }
}

@Suite("Deep fusion end to end: messages over ZeroMQ, fused by the server")
struct DeepFusionEndToEndTests {
    @Test(
        "at the cells each agent's head marks, 2-bit codes or codebook indices: under 1,398 bytes, and the Results are the offline fusion's",
        arguments: [false, true])
    func deepSessionMatchesOffline(codebook: Bool) async throws {
        var logger = Logger(label: "test")
        logger.logLevel = .error
        var config = CooperativeSession.Config(recording: samplePath, model: deepModelPath)
        config.agents = ["car_1", "car_2", "rsu_1"]
        config.maxFrames = 5
        config.bits = 2
        config.threshold = 0.2
        config.codebook = codebook
        let session = CooperativeSession(config)
        try await session.run(logger: logger)
        #expect(session.rejected == 0)

        let st = try Safetensors(contentsOf: deepModelPath)
        let detector = try DeepFusionDetector(st, spec: try #require(try DeepArchitecture(st)))
        let rec = try RecordingFrames(path: samplePath)
        let frames = Array(
            rec.frames.filter { f in config.agents!.allSatisfy { f.agents[$0]?.points.isEmpty == false } }.prefix(5))
        let encoders = try config.agents!.map { _ in try EdgeEncoder(modelFile: deepModelPath) }
        let feats = config.agents!.map { _ in FloatTensor(height: 32, width: 32, channels: 17) }
        var compared = 0
        var boxes = 0
        for (fi, f) in frames.enumerated() {
            var inputs: [CooperativeDetector.AgentInput] = []
            for (k, a) in config.agents!.enumerated() {
                let e = encoders[k]
                (e.bits, e.threshold, e.codebook) = (2, 0.2, codebook)
                let af = f.agents[a]!
                let pose = af.measuredPose ?? af.pose!
                let shape = af.points.withUnsafeBufferPointer { e.encode($0, sensorHeight: Float(af.pose!.position.z)) }
                #expect(shape.channels == (codebook ? 3 : 16) && shape.masked)
                #expect(e.frameQuantization.quant == (codebook ? .codebook : .model))
                e.dequantized(
                    into: feats[k], channels: shape.channels, height: shape.height, width: shape.width, masked: true)
                inputs.append(
                    .init(
                        features: feats[k], position: SIMD2(Float(pose.position.x), Float(pose.position.y)),
                        yaw: Float(pose.yaw)))
            }
            detector.beginPass()
            for (k, a) in config.agents!.enumerated() {
                let offline = detector.detect(ego: k, agents: inputs)
                guard let online = session.reports[a]!.detections[fi] else {
                    Issue.record("no Result for \(a) frame \(fi)")
                    continue
                }
                #expect(online.count == offline.count, "\(a) frame \(fi): \(online.count) vs \(offline.count) boxes")
                for (x, y) in zip(online, offline) {
                    #expect(abs(x.x - y.x) < 1e-4 && abs(x.y - y.y) < 1e-4 && abs(x.score - y.score) < 1e-6)
                }
                boxes += offline.count
                compared += 1
            }
        }
        #expect(compared == 15)
        #expect(boxes > 0, "no box detected: the comparison would be empty")
        for a in config.agents! {
            let r = session.reports[a]!
            #expect(r.results == 5)
            // On the wire, header included: the message fits one GeoNetworking packet.
            #expect(r.bytes > 0 && r.bytes / r.frames < 1_398, "\(a): \(r.bytes / r.frames) bytes per frame")
        }
    }
}

@Suite("slimsplit eval agrees with training/evaluate.py")
struct EvalAgreementTests {
    /// training/evaluate.py's AP on the committed sample (Tests/Fixtures/eval/sample_python_ap.json).
    @Test(arguments: [(3, 8, "intermediate, w=1.0, 8 bit"), (0, 4, "intermediate, w=0.25, 4 bit")])
    func sameAP(widthIndex: Int, bits: Int, name: String) async throws {
        let doc =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: root.appendingPathComponent("Tests/Fixtures/eval/sample_python_ap.json")))
            as! [String: Any]
        let r = (doc["results"] as! [[String: Any]]).first { $0["name"] as? String == name }!
        let want = r["ap"] as! [String: Double]
        var logger = Logger(label: "test")
        logger.logLevel = .error
        var config = CooperativeSession.Config(recording: samplePath, model: modelPath)
        config.widthIndex = widthIndex
        config.bits = bits
        config.firstFrame = 1  // evaluate.py evaluates from frame 1
        config.floatEncoder = true  // evaluate.py runs the encoder in float
        config.floatServer = true  // ...and the server in float
        let session = CooperativeSession(config)
        try await session.run(logger: logger)
        var fused = AveragePrecision()
        for rep in session.reports.values { fused.merge(rep.fusedAP) }
        for (i, t) in ["0.3", "0.5", "0.7"].enumerated() {
            #expect(
                abs(Double(fused.percent[i]) - want[t]!) <= 0.5,
                "AP@\(t): Swift \(fused.percent[i]), Python \(want[t]!)")
        }
    }
}
