import Foundation
import Testing

@testable import SlimEngine

/// Fixtures written by training/make_engine_fixtures.py with PyTorch (float) and ONNX Runtime
/// (int8), committed so CI needs neither.
enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/engine")

    static func names(_ folder: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(folder).path)) ?? [])
            .filter { $0.hasSuffix(".safetensors") }.map { String($0.dropLast(12)) }.sorted()
    }

    static func load(_ folder: String, _ name: String) throws -> Safetensors {
        try Safetensors(
            contentsOf: root.appendingPathComponent(folder).appendingPathComponent(name + ".safetensors").path)
    }

    static func params(_ st: Safetensors) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data((st.metadata["params"] ?? "{}").utf8)) as! [String: Any]
    }

    /// A float NCHW [1, C, H, W] tensor as an NHWC tensor.
    static func tensor(_ st: Safetensors, _ name: String) throws -> FloatTensor {
        let t = st.tensors[name]!
        let x = FloatTensor(height: t.shape[2], width: t.shape[3], channels: t.shape[1])
        try st.floats(name).withUnsafeBufferPointer { x.load(nchw: $0) }
        return x
    }

    static func qtensor(_ st: Safetensors, _ name: String) throws -> QTensor {
        let t = st.tensors[name]!
        let x = QTensor(height: t.shape[2], width: t.shape[3], channels: t.shape[1])
        try st.array(name, as: .u8, UInt8.self).withUnsafeBufferPointer { x.load(nchw: $0) }
        return x
    }
}

func pair(_ v: Any?) -> (Int, Int) {
    let a = v as! [Int]
    return (a[0], a[1])
}

/// Max |a − b| relative to the range of the expected values.
func relativeError(_ got: [Float], _ want: [Float]) -> Float {
    precondition(got.count == want.count)
    let range = max((want.max() ?? 0) - (want.min() ?? 0), 1e-6)
    return zip(got, want).map { abs($0 - $1) }.max()! / range
}

/// The PyTorch operator fixtures on `path` (convolutions take the path; the other operators have one).
enum FloatOpParity {
    static func check(_ name: String, path: KernelPath) throws {
        let st = try Fixtures.load("ops", name)
        let p = try Fixtures.params(st)
        let x = try Fixtures.tensor(st, "x")
        let want = try st.floats("y")
        let yShape = st.tensors["y"]!.shape
        let y = FloatTensor(height: yShape[2], width: yShape[3], channels: yShape[1])
        switch st.metadata["op"]! {
        case "conv2d", "conv_bn":
            let wShape = st.tensors["weight"]!.shape
            let g = ConvGeometry(
                kernel: pair(p["kernel"]), stride: pair(p["stride"]), padding: pair(p["padding"]),
                dilation: pair(p["dilation"]), groups: p["groups"] as! Int)
            var w = try st.floats("weight")
            var b = st.tensors["bias"] != nil ? try st.floats("bias") : nil
            if st.metadata["op"] == "conv_bn" {
                (w, b) = foldBatchNorm(
                    weight: w, bias: b, outChannels: wShape[0], gamma: try st.floats("bn.weight"),
                    beta: try st.floats("bn.bias"),
                    mean: try st.floats("bn.running_mean"), variance: try st.floats("bn.running_var"),
                    eps: Float(p["eps"] as! Double))
            }
            let conv = FloatConv2d(weight: w, bias: b, inChannels: x.channels, outChannels: wShape[0], geometry: g)
            conv.kernels = path
            conv.run(x, into: y)
        case "relu": Ops.activation(x, .relu, into: y)
        case "relu6": Ops.activation(x, .relu6, into: y)
        case "sigmoid": Ops.sigmoid(x, into: y)
        case "add": Ops.add(x, try Fixtures.tensor(st, "x2"), into: y)
        case "max": Ops.maximum(x, try Fixtures.tensor(st, "x2"), into: y)
        case "concat": Ops.concat([x, try Fixtures.tensor(st, "x2")], into: y)
        case "maxpool":
            Ops.maxPool(x, kernel: pair(p["kernel"]), stride: pair(p["stride"]), padding: pair(p["padding"]), into: y)
        case "upsample_nearest": Ops.upsampleNearest(x, scale: p["scale"] as! Int, into: y)
        case "softmax": Ops.softmaxChannels(x, into: y)
        case "affine_warp":
            PoseWarp.warp(x, theta: try st.floats("theta"), height: yShape[2], width: yShape[3], into: y)
        default:
            Issue.record("unknown op \(st.metadata["op"]!)")
            return
        }
        let shapeOK = y.height == yShape[2] && y.width == yShape[3] && y.channels == yShape[1]
        #expect(shapeOK)
        let err = relativeError(y.nchw(), want)
        #expect(err <= 1e-4, "\(path) \(name): max error \(err) of the output range")
    }

    static var convolutions: [String] { Fixtures.names("ops").filter { $0.hasPrefix("conv") } }
}

@Suite("Parity with PyTorch: float operators")
struct FloatParityTests {
    @Test(arguments: Fixtures.names("ops"))
    func op(_ name: String) throws { try FloatOpParity.check(name, path: .default) }
}

/// ONNX Runtime's QLinearConv fixtures on `path`: bit-exact.
enum Int8Parity {
    static func check(_ name: String, path: KernelPath) throws {
        let st = try Fixtures.load("int8", name)
        let p = try Fixtures.params(st)
        let x = try Fixtures.qtensor(st, "x_q")
        let wShape = st.tensors["weight_q"]!.shape
        let xq = try st.floats("x_qparams")
        let yq = try st.floats("y_qparams")
        let conv = QConv2d(
            weight: try st.array("weight_q", as: .i8), weightScale: try st.floats("weight_scale"),
            bias: try st.array("bias_q", as: .i32), inChannels: x.channels, outChannels: wShape[0],
            geometry: ConvGeometry(
                kernel: (wShape[2], wShape[3]), stride: pair(p["stride"]), padding: pair(p["padding"]),
                dilation: pair(p["dilation"]), groups: p["groups"] as! Int),
            input: QuantParams(scale: xq[0], zeroPoint: Int32(xq[1])),
            output: QuantParams(scale: yq[0], zeroPoint: Int32(yq[1])))
        conv.kernels = path
        let yShape = st.tensors["y_q"]!.shape
        let y = QTensor(height: yShape[2], width: yShape[3], channels: yShape[1])
        conv.run(x, into: y)
        let want: [UInt8] = try st.array("y_q", as: .u8)
        let got = y.nchw()
        let off = zip(got, want).filter { $0 != $1 }
        let maxOff = zip(got, want).map { abs(Int($0) - Int($1)) }.max() ?? 0
        // Bit-exact is expected: the sum is exact and the float requantization is ONNX Runtime's.
        #expect(off.isEmpty, "\(path) \(name): \(off.count) of \(want.count) values differ, by up to \(maxOff) LSB")
    }
}

/// The reference encoder at every width against PyTorch (float) and ONNX Runtime (int8).
enum EncoderParity {
    static func check(_ path: KernelPath) throws {
        let model = try SlimmableModel(contentsOf: Fixtures.root.appendingPathComponent("ref_encoder.safetensors").path)
        let io = try Fixtures.load("", "ref_encoder_io")
        let input = try Fixtures.tensor(io, "input")
        let encoder = SlimmableEncoder(model: model, inputHeight: input.height, inputWidth: input.width)
        encoder.kernels = path
        for wi in model.architecture.widths.indices {
            encoder.widthIndex = wi
            for sparse in [false, true] {
                encoder.sparse = sparse
                let f = encoder.runFloat(input)
                let err = relativeError(f.nchw(), try io.floats("float.\(wi)"))
                #expect(err <= 1e-4, "\(path) width \(wi) sparse \(sparse): float error \(err)")
                // int8 from ONNX Runtime's own quantized input, then from our quantization of the float input.
                let want: [UInt8] = try io.array("int8.\(wi)", as: .u8)
                let q = encoder.runInt8(quantized: try Fixtures.qtensor(io, "input_q.\(wi)")).nchw()
                #expect(
                    q.elementsEqual(want),
                    "\(path) width \(wi) sparse \(sparse): \(zip(q, want).filter { $0 != $1 }.count) int8 values differ"
                )
                let q2 = encoder.runInt8(input).nchw()
                #expect(
                    q2.elementsEqual(want),
                    "\(path) width \(wi): quantizing the input ourselves changes \(zip(q2, want).filter { $0 != $1 }.count) values"
                )
            }
        }
    }
}
