import Logging
import NIOCore
import NIOEmbedded
import SlimLive

// The HTTP endpoints (metrics, dashboard, Foxglove WebSocket upgrade and the client messages
// after it), driven through the pipeline every accepted connection gets, on an EmbeddedChannel.
// Invariants: whatever the bytes, the answer (if any) starts with an HTTP/1.1 status line; a
// 200 to a plain GET carries exactly Content-Length bytes of body; no crash, no trap.

private let quiet: Logger = {
    var l = Logger(label: "fuzz.http")
    l.logLevel = .critical
    return l
}()
private let hub = FoxgloveHub(
    name: "fuzz", channels: [.init(id: 1, topic: "/t", schemaName: "s", schema: "{}")])
private let routes: [String: HTTPService.Content] = [
    "/metrics": .prometheus { "slimsplit_fuzz 1\n" },
    "/": .init(type: "text/html") { Array("<html></html>".utf8) },
]

func fuzzHTTP(_ input: UnsafeRawBufferPointer) {
    let channel = EmbeddedChannel()
    do {
        _ = try HTTPService.installConnectionPipeline(on: channel, routes: routes, foxglove: hub, logger: quiet)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
    } catch {
        fatalError("pipeline: \(error)")
    }
    _ = try? channel.writeInbound(channel.allocator.buffer(bytes: input))
    var out = ByteBuffer()
    while let b = try? channel.readOutbound(as: ByteBuffer.self) { out.writeImmutableBuffer(b) }
    _ = try? channel.finish()
    guard out.readableBytes > 0 else { return }
    let text = String(decoding: out.readableBytesView, as: UTF8.self)
    invariant(text.hasPrefix("HTTP/1.1 "), "an answer that is not HTTP/1.1: \(text.prefix(40).debugDescription)")
    guard text.hasPrefix("HTTP/1.1 200"), let split = text.range(of: "\r\n\r\n") else { return }
    let head = text[..<split.lowerBound]
    if let line = head.split(separator: "\r\n").first(where: { $0.lowercased().hasPrefix("content-length:") }),
        let n = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)),
        !input.starts(with: Array("HEAD".utf8))
    {
        let body = out.readableBytes - (text.utf8.distance(from: text.startIndex, to: split.upperBound))
        invariant(body >= n, "a 200 with \(body) body bytes for Content-Length \(n)")
    }
}
