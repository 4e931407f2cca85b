import Foundation
import SlimPerception
import Testing

@testable import SlimEngine

/// The deep-fusion model (Models/slimsplit-deep.safetensors) against PyTorch on two agents of a
/// test frame (Tests/Fixtures/engine/deep_io.safetensors, written by training/export_deep.py
/// --fixture): each agent's stage (backbone, own head, message, the cells it sends at τ = 0.2) from
/// its float encoder map, the same on the int8 path (backbone and the head's shared layer in int8),
/// and the server's fused head for agent 0 from both float messages.
enum DeepParity {
    static let model = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Models/slimsplit-deep.safetensors").path
    static let io = Fixtures.root.appendingPathComponent("deep_io.safetensors").path

    /// Agent `k` of a float [A, C, H, W] tensor, NHWC.
    static func slice(_ st: Safetensors, _ name: String, _ k: Int) throws -> FloatTensor {
        let s = st.tensors[name]!.shape
        let all = try st.floats(name)
        let n = s[1] * s[2] * s[3]
        let x = FloatTensor(height: s[2], width: s[3], channels: s[1])
        Array(all[k * n..<(k + 1) * n]).withUnsafeBufferPointer { x.load(nchw: $0) }
        return x
    }

    /// Agent `k`'s own head outputs (fixture `head`.{heatmap, …}) within 1e-3, its cells sent (`sent`) identical.
    static func checkOwnHead(_ agent: DeepAgentStage, _ io: Safetensors, _ k: Int, head: String, sent: String) throws {
        for (name, t) in zip(["heatmap", "offset", "size", "yaw"], agent.headOutputs) {
            let e = relativeError(t.nchw(), try slice(io, "\(head).\(name)", k).nchw())
            #expect(e <= 1e-3, "agent \(k) own head \(head).\(name): \(e)")
        }
        let want = try slice(io, sent, k)
        let differ = (0..<want.count).filter { (want.storage[$0] > 0.5) != (agent.sent[$0] != 0) }.count
        #expect(differ == 0, "agent \(k) \(sent): \(differ) cells selected differently")
    }

    static func check(_ path: KernelPath) throws {
        guard FileManager.default.fileExists(atPath: Self.model), FileManager.default.fileExists(atPath: Self.io) else {
            Issue.record("missing \(Self.model) or \(Self.io)")
            return
        }
        let st = try Safetensors(contentsOf: Self.model)
        let io = try Safetensors(contentsOf: Self.io)
        let tau = Float(io.metadata["tau"] ?? "") ?? 0.2
        let spec = try #require(try DeepArchitecture(st))
        let agent = try DeepAgentStage(st, spec: spec)
        agent.kernels = path
        let server = try DeepFusionDetector(st, spec: spec)
        server.kernels = path
        let poses = try io.floats("poses")
        var inputs: [CooperativeDetector.AgentInput] = []
        var sentTotal = 0
        for k in 0..<2 {
            agent.run(try slice(io, "features", k), threshold: tau)
            let msg = try slice(io, "message", k)
            let err = relativeError(agent.message.nchw(), msg.nchw())
            #expect(err <= 1e-3, "agent \(k) message: \(err)")
            try checkOwnHead(agent, io, k, head: "local", sent: "sent")
            let want = try slice(io, "sent", k)
            sentTotal += agent.sent.reduce(0) { $0 + Int($1) }
            // The server's input: the (float) message with the sent flag as channel K.
            let kc = spec.messageChannels
            let x = FloatTensor(height: msg.height, width: msg.width, channels: kc + 1)
            for cell in 0..<(msg.height * msg.width) {
                for c in 0..<kc { x.storage[cell * (kc + 1) + c] = msg.storage[cell * kc + c] }
                x.storage[cell * (kc + 1) + kc] = want.storage[cell]
            }
            inputs.append(.init(features: x, position: SIMD2(poses[3 * k], poses[3 * k + 1]), yaw: poses[3 * k + 2]))
        }
        // The int8 backbone and the own head's shared layer on the maps quantized as the int8
        // encoder's output: bit-exact with the numpy QLinearConv reference; the head's float outputs
        // from those codes and the cells sent as PyTorch's; the message (float, from the dequantized
        // backbone) within 2 % of the float model's.
        let inQ = try #require(agent.inputQuant)
        for k in 0..<2 {
            let f = try slice(io, "features", k)
            let q = QTensor(height: f.height, width: f.width, channels: f.channels)
            for i in 0..<f.count { q.storage[i] = inQ.quantize(f.storage[i]) }
            agent.run(quantized: q, threshold: tau)
            for (name, got) in [("backbone_q", agent.backboneCodes.nchw()), ("head_q", try #require(agent.headCodes).nchw())] {
                let codes = try io.array(name, as: .u8, UInt8.self)
                let want = codes[k * got.count..<(k + 1) * got.count]
                #expect(got.elementsEqual(want), "agent \(k) \(name): \(zip(got, want).filter { $0 != $1 }.count) codes differ")
            }
            try checkOwnHead(agent, io, k, head: "local_q", sent: "sent_q")
            let err = relativeError(agent.message.nchw(), try slice(io, "message", k).nchw())
            #expect(err <= 0.02, "agent \(k) message from the int8 backbone: \(err)")
        }
        // Not vacuous: both agents send some cells, not all.
        #expect(sentTotal > 20 && sentTotal < 2 * 1024, "\(sentTotal) cells sent")
        let theta = try io.floats("theta")
        for k in 0..<2 {
            let th = server.theta(ego: inputs[0], agent: inputs[k])
            #expect(zip(th, theta[6 * k..<6 * k + 6]).allSatisfy { abs($0 - $1) < 1e-5 }, "theta \(k): \(th)")
        }
        server.beginPass()
        let outs = server.forward(ego: 0, agents: inputs)
        let first = outs[0].nchw()
        for (name, t) in zip(["heatmap", "offset", "size", "yaw"], outs) {
            let err = relativeError(t.nchw(), try slice(io, "fused.\(name)", 0).nchw())
            #expect(err <= 1e-3, "fused \(name): \(err)")
        }
        // The same pass again (agents prepared once) gives the same outputs.
        #expect(server.forward(ego: 0, agents: inputs)[0].nchw() == first)
        // Its boxes, decoded and merged as the file says (decode.merge: with both agents' boxes
        // read from their messages), as PyTorch and coop.merge_boxes give them.
        let boxes = server.detect(ego: 0, agents: inputs)
        let want = try io.floats("fused.boxes")
        try #require(want.count >= 6 * 3, "the fixture's fused head finds \(want.count / 6) boxes")
        #expect(boxes.count == want.count / 6, "\(boxes.count) boxes against \(want.count / 6)")
        for (k, b) in boxes.prefix(want.count / 6).enumerated() {
            let w = want[(6 * k)..<(6 * k + 6)].map { $0 }
            let dyaw = abs(remainder(b.yaw - w[4], .pi))
            #expect(
                abs(b.x - w[0]) < 0.02 && abs(b.y - w[1]) < 0.02 && abs(b.length - w[2]) < 0.02
                    && abs(b.width - w[3]) < 0.02 && dyaw < 2e-3 && abs(b.score - w[5]) < 2e-3,
                "box \(k): \(b) against \(w)")
        }
    }

    static let agentORT = Fixtures.root.appendingPathComponent("deep_agent_ort.safetensors").path

    /// The agent's whole int8 network from a BEV grid, against ONNX Runtime on
    /// Models/slimsplit-deep-agent-int8.onnx (Tests/Fixtures/engine/deep_agent_ort.safetensors,
    /// training/export_deep_onnx.py; Tests/interop checks the fixture against ONNX Runtime again):
    /// the int8 encoder (sparse, as agents run it) and backbone, the own head's shared layer,
    /// codes bit-exact; the head's float outputs within 1e-4.
    static func checkAgainstORT(_ path: KernelPath) throws {
        let st = try Safetensors(contentsOf: Self.model)
        let io = try Safetensors(contentsOf: Self.agentORT)
        let model = try SlimmableModel(st)
        let spec = try #require(try DeepArchitecture(st))
        let agent = try DeepAgentStage(st, spec: spec)
        agent.kernels = path
        let (c, h, w) = (model.architecture.input.channels, model.architecture.input.height, model.architecture.input.width)
        let encoder = SlimmableEncoder(model: model, inputHeight: h, inputWidth: w)
        encoder.kernels = path
        // A float grid that quantizes to exactly the fixture's input codes.
        let q = try io.array("input_q", as: .u8, UInt8.self)
        let qp = try io.floats("input_qparams")
        let grid = [Float](q.map { (Float($0) - qp[1]) * qp[0] })
        let x = FloatTensor(height: h, width: w, channels: c)
        grid.withUnsafeBufferPointer { x.load(nchw: $0) }
        agent.run(quantized: encoder.runInt8(x), threshold: 0.2)
        for (name, got) in [("backbone_q", agent.backboneCodes.nchw()), ("head_q", try #require(agent.headCodes).nchw())] {
            let want = try io.array(name, as: .u8, UInt8.self)
            let differ = zip(got, want).filter { $0 != $1 }.count
            #expect(
                got.count == want.count && differ == 0,
                "\(path) \(name): \(differ) of \(want.count) codes differ from ONNX Runtime's")
        }
        for (name, t) in zip(["heatmap", "offset", "size", "yaw"], agent.headOutputs) {
            let e = relativeError(t.nchw(), try io.floats("head.\(name)"))
            #expect(e <= 1e-4, "\(path) own head \(name): \(e) from ONNX Runtime's")
        }
        // Not vacuous: the grid has points, and the head marks cells.
        #expect(grid.contains { $0 != 0 } && agent.sent.contains(1) && agent.sent.contains(0))
    }

}
