import Dispatch
import Glibc

/// Runs `handler` once on SIGINT or SIGTERM (graceful shutdown). Keep the returned sources
/// alive for as long as the handler should stay installed.
func onShutdownSignal(_ handler: @escaping @Sendable () -> Void) -> [any DispatchSourceSignal] {
    [SIGINT, SIGTERM].map { sig in
        signal(sig, SIG_IGN)
        let src = DispatchSource.makeSignalSource(signal: sig, queue: .global())
        src.setEventHandler(handler: handler)
        src.resume()
        return src
    }
}

func sleepSeconds(_ s: Double) async {
    try? await Task.sleep(nanoseconds: UInt64(max(0, s) * 1e9))
}
