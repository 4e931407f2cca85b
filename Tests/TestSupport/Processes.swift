import Foundation

/// Runs `/usr/bin/env args…` to completion without blocking a thread of the concurrency pool
/// (the socket tests beside it need those threads): output goes to a file, and the process is
/// polled. Returns nil when it cannot start or runs past `timeout` seconds (then it is killed).
public func runProcess(_ args: [String], directory: URL? = nil, timeout: Double = 120) async -> (status: Int32, output: String)? {
    let out = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-proc-\(getpid())-\(UUID().uuidString)")
    _ = FileManager.default.createFile(atPath: out.path, contents: nil)
    defer { try? FileManager.default.removeItem(at: out) }
    guard let handle = try? FileHandle(forWritingTo: out) else { return nil }
    defer { try? handle.close() }
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = args
    if let directory { p.currentDirectoryURL = directory }
    p.standardOutput = handle
    p.standardError = handle
    guard (try? p.run()) != nil else { return nil }
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning {
        if Date() > deadline {
            p.terminate()
            return nil
        }
        try? await Task.sleep(nanoseconds: 20_000_000)
    }
    return (p.terminationStatus, (try? String(contentsOf: out, encoding: .utf8)) ?? "")
}

/// Whether python3 imports every module of `modules` (one `import` line).
public func pythonHas(_ modules: String) async -> Bool {
    await runProcess(["python3", "-c", "import \(modules)"], timeout: 60)?.status == 0
}

/// Whether python3 imports every module of `modules`, answered at once (blocking): for
/// `.enabled(if:)` traits, which are evaluated before any test runs.
public func pythonImportsNow(_ modules: String) -> Bool {
    let probe = Process()
    probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    probe.arguments = ["python3", "-c", "import \(modules)"]
    probe.standardError = FileHandle.nullDevice
    guard (try? probe.run()) != nil else { return false }
    probe.waitUntilExit()
    return probe.terminationStatus == 0
}
