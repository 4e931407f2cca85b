import CAllocCounter
import Testing

@testable import SlimEngine

struct LCG {
    var s: UInt64
    mutating func next() -> UInt64 {
        s = s &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return s >> 33
    }
    mutating func int8() -> Int8 { Int8(Int(next() % 255) - 127) }
    mutating func u8() -> UInt8 { UInt8(next() % 256) }
    mutating func float() -> Float { Float(next() % 20001) / 10000 - 1 }
}

/// Random int8 convolutions of awkward shapes (odd channel counts, groups, depthwise, dilation,
/// stride, 5×5) that every kernel path must compute exactly as this plain reference does.
enum RandomQConv {
    struct Case: Sendable, CustomStringConvertible {
        var ci: Int, co: Int, h: Int, w: Int, k: Int, s: Int, p: Int, d: Int, g: Int
        var description: String { "ci\(ci) co\(co) \(h)x\(w) k\(k) s\(s) p\(p) d\(d) g\(g)" }
    }

    static let cases: [Case] = [
        Case(ci: 8, co: 32, h: 13, w: 11, k: 3, s: 2, p: 1, d: 1, g: 1),
        Case(ci: 5, co: 7, h: 9, w: 10, k: 3, s: 1, p: 1, d: 1, g: 1),
        Case(ci: 64, co: 64, h: 8, w: 8, k: 1, s: 1, p: 0, d: 1, g: 1),
        Case(ci: 33, co: 70, h: 7, w: 9, k: 3, s: 1, p: 2, d: 2, g: 1),
        Case(ci: 6, co: 6, h: 9, w: 9, k: 3, s: 1, p: 1, d: 1, g: 2),
        Case(ci: 12, co: 12, h: 9, w: 8, k: 3, s: 2, p: 1, d: 1, g: 12),
        Case(ci: 3, co: 17, h: 6, w: 5, k: 5, s: 1, p: 2, d: 1, g: 1),
        Case(ci: 96, co: 96, h: 6, w: 11, k: 3, s: 1, p: 1, d: 1, g: 1),
    ]

    /// Inputs: `.mixed` has a 255 in every seventh byte; `.rareHigh` keeps bytes ≤ 127 but for one
    /// byte above 127 in every 37th pixel (the calibrated activations' shape, where avx2 runs
    /// vpmaddubsw with an excess kernel for the few outputs that touch such a byte).
    enum Input: CaseIterable { case mixed, rareHigh }

    static func make(_ c: Case, seed: UInt64, input: Input = .mixed) -> (QConv2d, QTensor) {
        var r = LCG(s: seed)
        let taps = c.k * c.k
        // Extreme weights (±127) and inputs (0, 255) included: where a saturating 16-bit
        // intermediate (vpmaddubsw) would go wrong.
        let w = (0..<(c.co * c.ci / c.g * taps)).map { i in i % 11 == 0 ? (i % 22 == 0 ? 127 : -127) : r.int8() }
        let scale = (0..<c.co).map { _ in Float(0.0002 + Double(r.next() % 100) / 200000) }
        let bias = (0..<c.co).map { _ in Int32(Int(r.next() % 2001) - 1000) }
        let conv = QConv2d(
            weight: w, weightScale: scale, bias: bias, inChannels: c.ci, outChannels: c.co,
            geometry: ConvGeometry(
                kernel: (c.k, c.k), stride: (c.s, c.s), padding: (c.p, c.p), dilation: (c.d, c.d), groups: c.g),
            input: QuantParams(scale: 0.02, zeroPoint: 37), output: QuantParams(scale: 0.05, zeroPoint: 11))
        let x = QTensor(height: c.h, width: c.w, channels: c.ci)
        switch input {
        case .mixed: for i in 0..<x.count { x.storage[i] = i % 7 == 0 ? 255 : r.u8() }
        case .rareHigh:
            for i in 0..<x.count { x.storage[i] = r.u8() & 0x7F }
            for px in stride(from: 5, to: c.h * c.w, by: 37) {
                x.storage[px * c.ci + px % c.ci] = 128 + UInt8(px % 128)
            }
        }
        return (conv, x)
    }

    /// The definition, one output at a time (QLinearConv with ONNX Runtime's requantization).
    static func reference(_ conv: QConv2d, _ x: QTensor) -> [UInt8] {
        sums(conv, x).enumerated().map { (i, acc) in
            let o = i % conv.outChannels
            let v = (Float(acc) * conv.mult[o]).rounded(.toNearestOrEven) + Float(conv.output.zeroPoint)
            return UInt8(min(max(v, 0), 255))
        }
    }

    /// The float output's definition: float(Σ(x − x_zp)·w + bias) · x_scale·w_scale[c], ReLU'd.
    static func referenceFloat(_ conv: QConv2d, _ x: QTensor, relu: Bool) -> [Float] {
        sums(conv, x).enumerated().map { (i, acc) in
            let f = Float(acc) * conv.floatMult[i % conv.outChannels]
            return relu && !(f > 0) ? 0 : f
        }
    }

    /// Σ(x − x_zp)·w + bias of every output (NHWC), exact.
    static func sums(_ conv: QConv2d, _ x: QTensor) -> [Int32] {
        let g = conv.geometry
        let taps = g.kernel.h * g.kernel.w
        let (oh, ow) = g.outputSize(height: x.height, width: x.width)
        var y = [Int32](repeating: 0, count: oh * ow * conv.outChannels)
        for oy in 0..<oh {
            for ox in 0..<ow {
                for o in 0..<conv.outChannels {
                    let grp = o / conv.outPerGroup
                    var acc: Int32 = 0
                    for ky in 0..<g.kernel.h {
                        for kx in 0..<g.kernel.w {
                            let iy = oy * g.stride.h - g.padding.h + ky * g.dilation.h
                            let ix = ox * g.stride.w - g.padding.w + kx * g.dilation.w
                            guard iy >= 0, iy < x.height, ix >= 0, ix < x.width else { continue }
                            for i in 0..<conv.inPerGroup {
                                let xv = Int32(x[iy, ix, grp * conv.inPerGroup + i]) - conv.input.zeroPoint
                                acc += xv * Int32(conv.weights[(o * conv.inPerGroup + i) * taps + ky * g.kernel.w + kx])
                            }
                        }
                    }
                    y[(oy * ow + ox) * conv.outChannels + o] = acc &+ conv.bias[o]
                }
            }
        }
        return y
    }

    /// Every case on `path`, densely and with a sparse activity map, against the reference.
    static func check(_ path: KernelPath) {
        for c in cases { for input in Input.allCases { check(path, c, input) } }
    }

    static func check(_ path: KernelPath, _ c: Case, _ input: Input) {
        let (conv, x) = make(c, seed: 7, input: input)
        conv.kernels = path
        let (oh, ow) = conv.geometry.outputSize(height: c.h, width: c.w)
        let y = QTensor(height: oh, width: ow, channels: c.co)
        conv.run(x, into: y)
        let want = reference(conv, x)
        let wrong = zip(y.values, want).filter { $0 != $1 }.count
        #expect(wrong == 0, "\(path) \(c) \(input): \(wrong) of \(want.count) values differ from the definition")
        #expect(Set(want).count > 10, "\(c): the case saturates")
        // Sparse: every third output is background, the rest as computed.
        var active = [UInt8](repeating: 1, count: oh * ow)
        for i in stride(from: 0, to: active.count, by: 3) { active[i] = 0 }
        let bg = (0..<c.co).map { UInt8($0 % 256) }
        active.withUnsafeBufferPointer { a in
            bg.withUnsafeBufferPointer { b in conv.run(x, into: y, active: a.baseAddress, background: b.baseAddress) }
        }
        var ok = true
        for cell in 0..<(oh * ow) {
            for o in 0..<c.co where y.storage[cell * c.co + o] != (active[cell] == 0 ? bg[o] : want[cell * c.co + o]) {
                ok = false
            }
        }
        #expect(ok, "\(path) \(c) \(input): sparse run differs")
        // Float output, with and without ReLU, dense and sparse: the same bits as the definition.
        let yf = FloatTensor(height: oh, width: ow, channels: c.co)
        let bgf = (0..<c.co).map { Float($0) - 0.5 }
        for relu in [false, true] {
            let wantF = referenceFloat(conv, x, relu: relu)
            conv.run(x, intoFloat: yf, relu: relu)
            let bad = zip(yf.values, wantF).filter { $0.bitPattern != $1.bitPattern }.count
            #expect(bad == 0, "\(path) \(c) \(input) float relu=\(relu): \(bad) of \(wantF.count) differ")
            #expect(relu || wantF.contains { $0 < 0 }, "\(c): no negative float output to check")
            active.withUnsafeBufferPointer { a in
                bgf.withUnsafeBufferPointer { b in
                    conv.run(x, intoFloat: yf, relu: relu, active: a.baseAddress, background: b.baseAddress)
                }
            }
            var okF = true
            for cell in 0..<(oh * ow) {
                for o in 0..<c.co {
                    let w = active[cell] == 0 ? bgf[o] : wantF[cell * c.co + o]
                    if yf.storage[cell * c.co + o].bitPattern != w.bitPattern { okF = false }
                }
            }
            #expect(okF, "\(path) \(c) \(input) float relu=\(relu): sparse run differs")
        }
    }
}

@Suite("Slimmable encoder: width switching, sparsity, allocation")
struct EncoderTests {
    /// A small model built in memory: 2 → 8 → 8 → 4 channels, switchable BN, int8 per width.
    static func model() throws -> SlimmableModel {
        var r = LCG(s: 11)
        var w = SafetensorsWriter()
        let widths = [0.5, 1.0]
        let layers: [(String, String, Int, Int, Int, Int, Bool, Bool, String?)] = [
            ("c1", "input", 2, 8, 3, 2, false, true, "relu"), ("c2", "c1", 8, 8, 3, 1, true, true, "relu"),
            ("c3", "c2", 8, 4, 1, 1, true, true, nil),
        ]
        var arch =
            #"{"name":"t","version":"1","input":{"name":"input","channels":2,"height":16,"width":16},"widths":[0.5,1.0],"layers":["#
        arch += layers.map { l in
            #"{"name":"\#(l.0)","type":"conv2d","input":"\#(l.1)","in_channels":\#(l.2),"out_channels":\#(l.3),"kernel":[\#(l.4),\#(l.4)],"stride":[\#(l.5),\#(l.5)],"padding":[\#(l.4 / 2),\#(l.4 / 2)],"dilation":[1,1],"groups":1,"bias":true,"batch_norm":"switchable","bn_eps":1e-5,"activation":\#(l.8.map { "\"\($0)\"" } ?? "null"),"slim_in":\#(l.6),"slim_out":\#(l.7)}"#
        }.joined(separator: ",")
        arch += #"],"output":"c3"}"#
        w.metadata = ["format": "slimsplit-model", "format_version": "1", "architecture": arch]
        w.add("input.int8.0.qparams", .f32, shape: [2], [Float(0.01), 0])
        w.add("input.int8.1.qparams", .f32, shape: [2], [Float(0.01), 0])
        for (name, _, ci, co, k, _, slimIn, slimOut, act) in layers {
            w.add("\(name).weight", .f32, shape: [co, ci, k, k], (0..<(co * ci * k * k)).map { _ in r.float() })
            w.add("\(name).bias", .f32, shape: [co], (0..<co).map { _ in r.float() })
            for (wi, width) in widths.enumerated() {
                let cow = slimOut ? Int((width * Double(co)).rounded(.up)) : co
                let ciw = slimIn ? Int((width * Double(ci)).rounded(.up)) : ci
                w.add("\(name).bn.\(wi).weight", .f32, shape: [cow], (0..<cow).map { _ in 1 + r.float() / 4 })
                w.add("\(name).bn.\(wi).bias", .f32, shape: [cow], (0..<cow).map { _ in r.float() / 4 })
                w.add("\(name).bn.\(wi).running_mean", .f32, shape: [cow], (0..<cow).map { _ in r.float() / 4 })
                w.add("\(name).bn.\(wi).running_var", .f32, shape: [cow], (0..<cow).map { _ in 1 + r.float() / 4 })
                w.add(
                    "\(name).int8.\(wi).weight", .i8, shape: [cow, ciw, k, k],
                    (0..<(cow * ciw * k * k)).map { _ in r.int8() })
                w.add("\(name).int8.\(wi).weight_scale", .f32, shape: [cow], [Float](repeating: 0.01, count: cow))
                w.add(
                    "\(name).int8.\(wi).bias", .i32, shape: [cow],
                    (0..<cow).map { _ in Int32(Int(r.next() % 200) - 100) })
                w.add("\(name).int8.\(wi).qparams", .f32, shape: [2], [Float(0.05), act == nil ? 128 : 0])
            }
        }
        return try SlimmableModel(Safetensors(bytes: w.serialized(), file: "test-model"))
    }

    static func sparseInput() -> FloatTensor {
        let x = FloatTensor(height: 16, width: 16, channels: 2)
        var r = LCG(s: 5)
        for cell in 0..<256 where r.next() % 7 == 0 {
            x.storage[cell * 2] = abs(r.float())
            x.storage[cell * 2 + 1] = abs(r.float())
        }
        return x
    }

    @Test func sparseEqualsDense() throws {
        let m = try Self.model()
        let enc = SlimmableEncoder(model: m, inputHeight: 16, inputWidth: 16)
        let x = Self.sparseInput()
        for wi in 0..<2 {
            enc.widthIndex = wi
            enc.sparse = false
            let dq = Array(enc.runInt8(x).values)
            let df = Array(enc.runFloat(x).values)
            enc.sparse = true
            let sq = Array(enc.runInt8(x).values)
            let sf = Array(enc.runFloat(x).values)
            #expect(dq == sq, "int8 sparse differs from dense at width \(wi)")
            let maxDiff = zip(df, sf).map { abs($0 - $1) }.max() ?? 0
            #expect(maxDiff < 1e-4, "float sparse differs by \(maxDiff)")
            #expect(enc.outputChannels == (wi == 0 ? 2 : 4))
        }
    }

    @Test("switching width and running allocate nothing")
    func noAllocation() throws {
        let m = try Self.model()
        let enc = SlimmableEncoder(model: m, inputHeight: 16, inputWidth: 16)
        let x = Self.sparseInput()
        for wi in 0..<2 {
            enc.widthIndex = wi
            _ = enc.runInt8(x)
            _ = enc.runFloat(x)
        }  // warm up
        let before = slim_alloc_count()
        for i in 0..<100 {
            enc.widthIndex = i % 2
            _ = enc.runInt8(x)
            _ = enc.runFloat(x)
        }
        #expect(slim_alloc_count() - before == 0)
        // The counter does count: an array allocates.
        let probe = slim_alloc_count()
        let a = [Int](repeating: 1, count: 1000)
        #expect(slim_alloc_count() > probe && a.count == 1000)
    }
}
