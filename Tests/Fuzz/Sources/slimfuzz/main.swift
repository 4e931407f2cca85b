import Glibc

// One libFuzzer binary for every parser of outside input; SLIMFUZZ_TARGET picks the parser.
// Built and run by scripts/fuzz (with -sanitize=fuzzer,address), which seeds each target from
// the committed fixtures. Every target checks an invariant beyond "no crash" and reports a
// broken one with a precondition failure, which libFuzzer records as a crash.

enum Target: String, CaseIterable {
    case wire, mcap, cdr, safetensors, config, http, velodyne
    case rateTable = "rate-table"

    var run: (UnsafeRawBufferPointer) -> Void {
        switch self {
        case .wire: fuzzWire
        case .mcap: fuzzMCAP
        case .cdr: fuzzCDR
        case .safetensors: fuzzSafetensors
        case .config: fuzzConfig
        case .http: fuzzHTTP
        case .velodyne: fuzzVelodyne
        case .rateTable: fuzzRateTable
        }
    }
}

let target: Target = {
    let names = Target.allCases.map(\.rawValue).joined(separator: ", ")
    guard let p = getenv("SLIMFUZZ_TARGET"), let t = Target(rawValue: String(cString: p)) else {
        fputs("slimfuzz: set SLIMFUZZ_TARGET to one of: \(names)\n", stderr)
        exit(2)
    }
    return t
}()

// libFuzzer's own driver (flags, corpus directories, -runs, ...), entered from this main.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

_ = target
var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv, testOneInput))

/// A broken invariant: stops the run with the message (fatalError keeps its message in
/// optimized builds, where precondition drops it), and libFuzzer saves the input.
func invariant(_ holds: Bool, _ message: @autoclosure () -> String) {
    if !holds { fatalError(message()) }
}

/// One input. libFuzzer's driver calls it through the main above, or directly in builds that
/// link libFuzzer's own main instead (SwiftPM debug builds).
@_cdecl("LLVMFuzzerTestOneInput")
public func testOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    target.run(UnsafeRawBufferPointer(start: size > 0 ? data : nil, count: size))
    return 0
}
