import CKernels
import Testing

@testable import SlimEngine

/// Every kernel path this CPU runs against the same fixtures: random int8 convolutions against
/// the plain definition (exact), ONNX Runtime's QLinearConv fixtures (exact), PyTorch's float
/// convolutions (1e-4), the reference encoder at every width, `slimsplit-bev`, and the deep-fusion model (against PyTorch, and its whole agent against ONNX Runtime). A path the
/// CPU lacks is reported as skipped, with the reason; the ARM paths also run under qemu
/// (scripts/arm-parity).
@Suite("Kernel paths: every path the CPU runs passes the parity fixtures", .serialized)
struct KernelPathTests {
    static func check(_ path: KernelPath) throws {
        RandomQConv.check(path)
        for name in Fixtures.names("int8") { try Int8Parity.check(name, path: path) }
        for name in FloatOpParity.convolutions { try FloatOpParity.check(name, path: path) }
        try EncoderParity.check(path)
        try ModelParity.check(path)
        try DeepParity.check(path)
        try DeepParity.checkAgainstORT(path)
    }

    @Test("portable") func portable() throws { try Self.check(.portable) }

    @Test("avx2", .enabled(if: KernelPath.avx2.isSupported, "this CPU has no AVX2 + FMA"))
    func avx2() throws { try Self.check(.avx2) }

    @Test("avx-vnni", .enabled(if: KernelPath.avxVNNI.isSupported, "this CPU has no AVX-VNNI"))
    func avxVNNI() throws { try Self.check(.avxVNNI) }

    @Test("avx512", .enabled(if: KernelPath.avx512.isSupported, "this CPU has no AVX-512 VNNI"))
    func avx512() throws { try Self.check(.avx512) }

    @Test(
        "neon", .enabled(if: KernelPath.neon.isSupported, "not an aarch64 CPU (scripts/arm-parity runs it under qemu)"))
    func neon() throws { try Self.check(.neon) }

    @Test(
        "neon-dot",
        .enabled(
            if: KernelPath.neonDot.isSupported, "no ARMv8.2 dot product here (scripts/arm-parity runs it under qemu)"))
    func neonDot() throws { try Self.check(.neonDot) }

    @Test("a path the CPU lacks is a clear error, not an illegal instruction")
    func unsupported() throws {
        #expect(KernelPath.supported.contains(.portable))
        #expect(KernelPath.best.isSupported)
        #expect(throws: KernelPathError.self) { try KernelPath.resolve("sse9") }
        let unknown = KernelPathErrorText.of("sse9")
        #expect(unknown.contains("unknown kernel path") && unknown.contains("portable"))
        let foreign: KernelPath = KernelPath.avx2.isSupported ? .neon : .avx2
        let text = KernelPathErrorText.of(foreign.name, source: "SLIMSPLIT_KERNELS")
        #expect(text.contains("SLIMSPLIT_KERNELS=\(foreign.name): this CPU cannot run it"), "\(text)")
        #expect(throws: KernelPathError.self) {
            try KernelPath.configure(nil, environment: ["SLIMSPLIT_KERNELS": foreign.name])
        }
        // The C entry refuses too, without touching the output.
        let (conv, x) = RandomQConv.make(RandomQConv.cases[1], seed: 1)
        var a = slim_qconv_args()
        a.path = foreign.raw
        a.ci = Int32(conv.inChannels)
        var y = [UInt8](repeating: 9, count: 4)
        #expect(slim_qconv(&a, x.pointer, &y) == SLIM_EUNSUPPORTED)
        #expect(y == [9, 9, 9, 9])
        #expect(try KernelPath.resolve(nil) == KernelPath.best)
    }
}

enum KernelPathErrorText {
    static func of(_ name: String, source: String? = nil) -> String {
        do {
            if let source {
                _ = try KernelPath.configure(nil, environment: [source: name])
            } else {
                _ = try KernelPath.resolve(name)
            }
            return "no error"
        } catch { return error.description }
    }
}
