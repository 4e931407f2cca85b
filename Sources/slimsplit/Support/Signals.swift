import CShutdown
import Foundation
import Glibc

/// Runs `handler` once on the first SIGINT or SIGTERM (graceful shutdown); a second one exits at
/// once (status 130), for a person whose Ctrl-C did not seem to work. The handler runs on a thread
/// of its own, not in signal context. Keep the returned token alive for as long as the handler
/// should stay installed.
func onShutdownSignal(_ handler: @escaping @Sendable () -> Void) -> AnyObject {
    guard slim_shutdown_install() == 0 else {
        FileHandle.standardError.write(
            Data("warning: cannot catch SIGINT/SIGTERM: \(String(cString: strerror(errno)))\n".utf8))
        return NSObject()
    }
    let thread = Thread {
        var first = true
        while true {
            let sig = slim_shutdown_wait()
            if sig < 0 { return }
            if first {
                first = false
                handler()
            } else {
                _exit(130)
            }
        }
    }
    thread.name = "signals"
    thread.start()
    return thread
}

func sleepSeconds(_ s: Double) async {
    try? await Task.sleep(nanoseconds: UInt64(max(0, s) * 1e9))
}
