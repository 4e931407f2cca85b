import Foundation
import Logging
import SlimLive
import TestSupport
import Testing

/// The live view (dashboard and Foxglove WebSocket) and the limits of the HTTP stack under it.
@Suite("live view and HTTP limits")
struct LiveTests {
    static let websockets = pythonImportsNow("websockets")
    static let quiet: Logger = {
        var l = Logger(label: "test.live")
        l.logLevel = .critical
        return l
    }()

    @Test(
        "a Foxglove WebSocket client written from the spec gets fused detections and agent state during a demo session",
        .enabled(if: ShutdownTests.binary != nil, "the slimsplit binary is not built beside the tests"),
        .enabled(if: websockets, "python3 with websockets is not available (scripts/test installs it)"))
    func foxgloveClientDuringDemo() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-live-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("demo.txt")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        let demo = Process()
        demo.executableURL = URL(fileURLWithPath: ShutdownTests.binary!)
        demo.currentDirectoryURL = repoRoot
        demo.arguments = ["demo", "--live-port", "0", "--loops", "6", "--no-reference"]
        demo.standardOutput = try FileHandle(forWritingTo: out)
        demo.standardError = FileHandle.nullDevice
        try demo.run()
        defer { if demo.isRunning { demo.terminate() } }
        // The demo prints the port it got.
        var port: Int?
        let started = Date()
        while port == nil, demo.isRunning, Date().timeIntervalSince(started) < 120 {
            let text = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
            if let r = text.range(of: "dashboard http://127.0.0.1:") {
                port = Int(text[r.upperBound...].prefix { $0.isNumber })
            }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
        guard let port else {
            Issue.record("the demo printed no live view port: \((try? String(contentsOf: out, encoding: .utf8)) ?? "")")
            return
        }
        let client = await runProcess(
            [
                "python3", "Tests/interop/foxglove_client.py", "ws://127.0.0.1:\(port)/", "--want", "/fusion/detections",
                "--want", "/agents/state", "--min", "3", "--seconds", "120",
            ], directory: repoRoot, timeout: 180)
        let line = client?.output.split(separator: "\n").last.map(String.init) ?? ""
        #expect(client?.status == 0, "\(client?.output ?? "the client did not run")")
        let summary = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        #expect(summary?["subprotocol"] as? String == "foxglove.websocket.v1")
        #expect(summary?["agents"] as? [String] == ["car_1", "car_2", "rsu_1"], "\(line)")
        #expect((summary?["boxes_in_first_update"] as? Int ?? 0) > 0, "\(line)")
    }

    @Test("a request that never completes is cut off at the deadline and counted; the endpoint keeps answering")
    func slowRequestIsCutOff() async throws {
        var limits = HTTPService.Limits()
        limits.requestSeconds = 1
        let http = try HTTPService(
            host: "127.0.0.1", port: 0, routes: ["/metrics": .prometheus { "up 1\n" }], limits: limits, logger: Self.quiet)
        defer { http.close() }
        let fd = try #require(TCPClient(port: http.port))
        fd.send("GET /metr")
        #expect(await fd.closedByPeer(within: 60), "the server kept a half-sent request open")
        #expect(http.dropped["request_timeout"] == 1, "\(http.dropped)")
        guard case .success = MetricsProbe.get(host: "127.0.0.1", port: http.port, path: "/metrics", timeoutSeconds: 30)
        else {
            Issue.record("the endpoint stopped answering")
            return
        }
    }

    @Test("connections over the cap are closed at once and counted")
    func connectionCap() async throws {
        var limits = HTTPService.Limits()
        limits.maxConnections = 2
        limits.requestSeconds = 30
        let http = try HTTPService(
            host: "127.0.0.1", port: 0, routes: ["/metrics": .prometheus { "up 1\n" }], limits: limits, logger: Self.quiet)
        defer { http.close() }
        let idle = try [#require(TCPClient(port: http.port)), #require(TCPClient(port: http.port))]
        try await Task.sleep(nanoseconds: 200_000_000)
        let third = try #require(TCPClient(port: http.port))
        #expect(await third.closedByPeer(within: 60))
        #expect(http.dropped["too_many_clients"] == 1, "\(http.dropped)")
        _ = idle
    }

    @Test("with a token, the page and the WebSocket need it and /metrics does not")
    func token() throws {
        let http = try HTTPService(
            host: "127.0.0.1", port: 0,
            routes: ["/": .init(type: "text/html") { Array("page".utf8) }, "/metrics": .prometheus { "up 1\n" }],
            token: "s3cret", tokenExempt: ["/metrics"], logger: Self.quiet)
        defer { http.close() }
        let get = { (path: String) in MetricsProbe.get(host: "127.0.0.1", port: http.port, path: path, timeoutSeconds: 30) }
        guard case .failure(let refused) = get("/") else {
            Issue.record("the page was served without the token")
            return
        }
        #expect(refused.description.contains("401"))
        guard case .failure = get("/?token=wrong") else {
            Issue.record("a wrong token was accepted")
            return
        }
        guard case .success(let page) = get("/?token=s3cret"), case .success = get("/metrics") else {
            Issue.record("the right token or /metrics was refused")
            return
        }
        #expect(page == "page")
        #expect(http.dropped["unauthorized"] == 2, "\(http.dropped)")
    }

    @Test("a WebSocket client that never reads loses messages (counted), not the server's memory")
    func slowWebSocketClient() async throws {
        let hub = FoxgloveHub(name: "t", channels: [.init(id: 1, topic: "/t", schemaName: "s", schema: "{}")])
        let http = try HTTPService(host: "127.0.0.1", port: 0, routes: [:], foxglove: hub, logger: Self.quiet)
        defer { http.close() }
        let c = try #require(TCPClient(port: http.port))
        c.send(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: foxglove.websocket.v1\r\n\r\n"
        )
        // Subscribe (a masked text frame), then never read again.
        let sub = Array(#"{"op":"subscribe","subscriptions":[{"id":7,"channelId":1}]}"#.utf8)
        let mask: [UInt8] = [1, 2, 3, 4]
        c.send(bytes: [0x81, 0x80 | UInt8(sub.count)] + mask + sub.enumerated().map { $0.element ^ mask[$0.offset % 4] })
        var subscribed = false
        for _ in 0..<100 where !subscribed {
            try await Task.sleep(nanoseconds: 20_000_000)
            subscribed = hub.clientCount == 1 && hub.prometheusText.contains("slimsplit_live_clients 1")
        }
        try await Task.sleep(nanoseconds: 200_000_000)
        let payload = [UInt8](repeating: 0x61, count: 64 << 10)
        for i in 0..<1500 {  // 96 MiB offered
            hub.publish(channel: 1, logTimeNs: UInt64(i), payload: payload)
            if i % 100 == 0 { try await Task.sleep(nanoseconds: 5_000_000) }
        }
        try await Task.sleep(nanoseconds: 300_000_000)
        let text = hub.prometheusText
        let dropped = text.split(separator: "\n").first { $0.hasPrefix("slimsplit_live_dropped_total{reason=\"slow_client\"}") }
        let n = dropped.flatMap { Int($0.split(separator: " ").last ?? "") } ?? 0
        #expect(n > 1000, "\(text)")
    }
}

extension LiveTests {
    @Test("a WebSocket frame over the client limit closes that connection; other clients keep theirs")
    func hugeFrame() async throws {
        let hub = FoxgloveHub(name: "t", channels: [.init(id: 1, topic: "/t", schemaName: "s", schema: "{}")])
        let http = try HTTPService(host: "127.0.0.1", port: 0, routes: [:], foxglove: hub, logger: Self.quiet)
        defer { http.close() }
        let upgrade =
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: foxglove.websocket.v1\r\n\r\n"
        let good = try #require(TCPClient(port: http.port))
        let bad = try #require(TCPClient(port: http.port))
        good.send(upgrade)
        bad.send(upgrade)
        for _ in 0..<100 where hub.clientCount < 2 { try await Task.sleep(nanoseconds: 20_000_000) }
        #expect(hub.clientCount == 2)
        // A masked binary frame that declares 1 GiB (64-bit length), then a few bytes of it.
        bad.send(bytes: [0x82, 0xFF, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4] + [UInt8](repeating: 7, count: 64))
        #expect(await bad.closedByPeer(within: 60), "the server kept reading a 1 GiB frame")
        try await Task.sleep(nanoseconds: 100_000_000)
        #expect(hub.clientCount == 1)
        // The Foxglove SDK's name for the protocol is chosen when offered alone.
        let sdk = try #require(TCPClient(port: http.port))
        sdk.send(upgrade.replacingOccurrences(of: "foxglove.websocket.v1", with: "foxglove.sdk.v1"))
        #expect(await sdk.received(contains: "Sec-WebSocket-Protocol: foxglove.sdk.v1", within: 60))
    }
}

/// A TCP client on loopback for tests: sends raw bytes, notices when the server closes.
final class TCPClient {
    let fd: Int32
    init?(port: Int) {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if ok != 0 {
            close(fd)
            return nil
        }
        // A small receive buffer, so that a client that never reads fills up quickly.
        var small: Int32 = 4096
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
    }
    deinit { close(fd) }

    func send(_ text: String) { send(bytes: Array(text.utf8)) }
    func send(bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }

    /// Polls (without blocking a thread) until what the server sent contains `text`.
    func received(contains text: String, within seconds: Double) async -> Bool {
        var got: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n > 0 {
                got += buf[0..<n]
                if String(decoding: got, as: UTF8.self).lowercased().contains(text.lowercased()) { return true }
            } else if n == 0 {
                return false
            } else {
                try? await Task.sleep(nanoseconds: 20_000_000)
            }
        }
        return false
    }

    /// Polls (without blocking a thread) until the server closes the connection.
    func closedByPeer(within seconds: Double) async -> Bool {
        var buf = [UInt8](repeating: 0, count: 4096)
        let end = Date().addingTimeInterval(seconds)
        while Date() < end {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { return true }
            if n < 0 { try? await Task.sleep(nanoseconds: 20_000_000) }
        }
        return false
    }
}
