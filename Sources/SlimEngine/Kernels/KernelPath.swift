import CKernels
import Foundation
import Synchronization

/// The instruction-set path the engine's convolutions run on.
///
/// Every path computes the same int8 results bit for bit (exact int32 sums, ONNX Runtime's
/// requantization) and the same float results up to rounding; they differ only in speed. The
/// process picks the fastest path its CPU runs, once, at start (CPUID on x86-64, HWCAP on
/// aarch64); `SLIMSPLIT_KERNELS` or a command's `--kernels` option overrides it, and naming a
/// path the CPU lacks is an error (`KernelPathError`), never an illegal instruction.
///
/// ```
/// $ SLIMSPLIT_KERNELS=avx2 slimsplit-bench encoder --json   # "kernels": "avx2"
/// $ SLIMSPLIT_KERNELS=neon-dot slimsplit server ...         # on a Cortex-A72:
/// error: SLIMSPLIT_KERNELS=neon-dot: this CPU cannot run it (it runs: portable, neon)
/// ```
public struct KernelPath: Sendable, Hashable, CustomStringConvertible {
    let raw: Int32

    /// Plain C written for the vectorizer (SSE2 on x86-64, NEON on aarch64): an unknown CPU is slow, not unusable.
    public static let portable = KernelPath(raw: Int32(SLIM_PATH_PORTABLE))
    /// x86-64-v3: AVX2 + FMA (every x86-64 CPU of the last ten years).
    public static let avx2 = KernelPath(raw: Int32(SLIM_PATH_AVX2))
    /// AVX2 with 256-bit int8 dot products (AVX-VNNI: Alder Lake, Sapphire Rapids, Zen 5).
    public static let avxVNNI = KernelPath(raw: Int32(SLIM_PATH_AVX_VNNI))
    /// AVX-512 F/BW/VL + VNNI.
    public static let avx512 = KernelPath(raw: Int32(SLIM_PATH_AVX512))
    /// aarch64 ARMv8.0 NEON (Cortex-A72: Raspberry Pi 4).
    public static let neon = KernelPath(raw: Int32(SLIM_PATH_NEON))
    /// ARMv8.2 dot product (Cortex-A76/A78: Raspberry Pi 5, Jetson Orin).
    public static let neonDot = KernelPath(raw: Int32(SLIM_PATH_NEON_DOT))

    /// Every path, on any architecture.
    public static let all: [KernelPath] = [.portable, .avx2, .avxVNNI, .avx512, .neon, .neonDot]

    /// The name `SLIMSPLIT_KERNELS` and `--kernels` take: portable, avx2, avx-vnni, avx512, neon, neon-dot.
    public var name: String { String(cString: slim_path_name(raw)) }
    public var description: String { name }

    /// True if this CPU runs the path.
    public var isSupported: Bool { slim_path_supported(raw) != 0 }

    /// The paths this CPU runs, slowest first.
    public static var supported: [KernelPath] { all.filter(\.isSupported) }

    /// The fastest path this CPU runs.
    public static var best: KernelPath { KernelPath(raw: slim_path_best()) }

    public init?(name: String) {
        guard let p = Self.all.first(where: { $0.name == name }) else { return nil }
        self = p
    }

    private init(raw: Int32) { self.raw = raw }

    /// The path new engine objects use: the one `configure` chose, else `SLIMSPLIT_KERNELS` when it
    /// names a path this CPU runs, else `best`.
    public static var `default`: KernelPath {
        chosen.withLock { p in
            if let p { return p }
            let resolved = (try? resolve(ProcessInfo.processInfo.environment["SLIMSPLIT_KERNELS"])) ?? best
            p = resolved
            return resolved
        }
    }

    /// Sets the process default from an explicit choice (a `--kernels` option), else from
    /// `SLIMSPLIT_KERNELS`, else the best path; call it once at start, before building encoders.
    /// - Throws: `KernelPathError` when the name is unknown or the CPU lacks the path.
    @discardableResult
    public static func configure(
        _ option: String? = nil,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) throws(KernelPathError) -> KernelPath {
        let source = option != nil ? "--kernels" : "SLIMSPLIT_KERNELS"
        let p: KernelPath
        do { p = try resolve(option ?? environment["SLIMSPLIT_KERNELS"]) } catch let e { throw e.from(source) }
        chosen.withLock { $0 = p }
        return p
    }

    /// `name` as a path this CPU runs (nil or empty: the best one).
    public static func resolve(_ name: String?) throws(KernelPathError) -> KernelPath {
        guard let name, !name.isEmpty else { return best }
        guard let p = KernelPath(name: name) else { throw KernelPathError(source: "", name: name, known: false) }
        guard p.isSupported else { throw KernelPathError(source: "", name: name, known: true) }
        return p
    }

    private static let chosen = Mutex<KernelPath?>(nil)
}

/// A kernel path that is unknown, or that this CPU cannot run.
public struct KernelPathError: Error, CustomStringConvertible {
    /// Where the name came from: `SLIMSPLIT_KERNELS` or `--kernels` (empty when resolved directly).
    public var source: String
    public var name: String
    /// False: no path has that name; true: a real path this CPU lacks.
    public var known: Bool

    func from(_ s: String) -> KernelPathError { KernelPathError(source: s, name: name, known: known) }

    public var description: String {
        let runs = KernelPath.supported.map(\.name).joined(separator: ", ")
        let what = source.isEmpty ? "kernel path '\(name)'" : "\(source)=\(name)"
        if known { return "\(what): this CPU cannot run it (it runs: \(runs))" }
        return
            "\(what): unknown kernel path (one of: \(KernelPath.all.map(\.name).joined(separator: ", ")); this CPU runs: \(runs))"
    }
}
