import CZeroMQ
import Foundation
import Logging
import SlimAgent
import SlimServer
import SlimTransport
import SlimWire
import Testing

let testLogger: Logger = {
    var l = Logger(label: "test")
    l.logLevel = .error
    return l
}()

/// Polls `condition` every 10 ms until it holds or `seconds` pass; returns whether it held.
/// Tests wait on outcomes, never assert durations.
func eventually(_ seconds: Double = 60, _ condition: () -> Bool) async -> Bool {
    let deadline = SystemClock.monotonicNs() + UInt64(seconds * 1e9)
    while SystemClock.monotonicNs() < deadline {
        if condition() { return true }
        try? await Task.sleep(nanoseconds: 10_000_000)
    }
    return condition()
}

/// A server with Curve on and an allow-list, on an ephemeral loopback port.
final class TestServer: Sendable {
    let keys: CurveKeyPair
    let router: RouterEndpoint
    let server: FeatureServer
    let task: Task<Void, Never>

    init(
        allowed: [String: CurveKeyPair], curve: Bool = true, options: ServerOptions = ServerOptions(),
        socket: SocketOptions = SocketOptions(), endpoint: String = "tcp://127.0.0.1:0", keys: CurveKeyPair? = nil,
        check: FeatureServer.FrameCheck? = nil
    ) throws {
        self.keys = try keys ?? CurveKeyPair.generate()
        var allow = CurveAllowList()
        for (name, k) in allowed { allow.names[k.publicKey] = name }
        router = try RouterEndpoint(
            bind: endpoint, curve: curve ? CurveServer(keyPair: self.keys, allowList: allow) : nil,
            options: socket, logger: testLogger)
        server = FeatureServer(endpoint: router, options: options, logger: testLogger, check: check)
        let s = server
        task = Task { await s.run() }
    }

    func stop() async {
        router.close()
        await task.value
    }
}

/// A Swift agent streaming small synthetic frames.
final class TestAgent: Sendable {
    let agent: FeatureAgent
    let task: Task<Void, Never>

    init(id: String, server: TestServer, keys: CurveKeyPair?, curve: Bool = true) throws {
        agent = try FeatureAgent(
            identity: AgentIdentity(agentID: id, modelID: "test"), server: server.router.endpoint,
            curve: curve ? CurveClient(keyPair: keys!, serverKey: server.keys.publicKey) : nil,
            maxFrameBytes: 1 << 16, logger: testLogger)
        let a = agent
        task = Task { await a.run() }
    }

    static let header = FeatureFrameHeader(
        agentID: "", sequence: 0, captureTimeNs: 1, modelID: "test", widthIndex: 3, bits: 4,
        channels: 8, height: 16, width: 16,
        quant: .inline(scales: .init(repeating: 0.25, count: 8), zeroPoints: .init(repeating: 0, count: 8)),
        codec: .lz4)
    static let dense: [UInt8] = (0..<(8 * 16 * 16)).map { UInt8(($0 * 7) % 16) }

    /// Sends `count` frames, waiting for each to be acknowledged (so none is replaced). A frame
    /// lost with a dying connection is never acknowledged; like an agent's next sweep, a new
    /// frame then goes after 2 s (within 20 s in all).
    func stream(_ count: Int) async -> Bool {
        for _ in 0..<count {
            let before = agent.stats.acks
            let deadline = SystemClock.monotonicNs() + 20_000_000_000
            var acked = false
            while !acked, SystemClock.monotonicNs() < deadline {
                Self.dense.withUnsafeBufferPointer { _ = agent.submit(Self.header, dense: $0, mask: nil) }
                acked = await eventually(2, { self.agent.stats.acks > before })
            }
            guard acked else { return false }
        }
        return true
    }

    func stop() async {
        agent.endpoint.close()
        await task.value
    }
}

/// A raw libzmq DEALER used from the test's own thread to send arbitrary bytes.
final class RawClient {
    let ctx = zmq_ctx_new()!
    let socket: UnsafeMutableRawPointer

    /// `receiveHWM`: messages libzmq queues for this client before it stops reading the
    /// connection (small, for a client that stops reading).
    init(endpoint: String, serverKey: CurveKey?, keys: CurveKeyPair?, receiveHWM: Int32? = nil) {
        socket = zmq_socket(ctx, ZMQ_DEALER)
        var zero: Int32 = 0
        zmq_setsockopt(socket, ZMQ_LINGER, &zero, 4)
        // A DEALER with no connected peer (a refused Curve handshake) blocks in send forever, on a
        // thread of the concurrency pool every other suite needs: give up after 2 s instead.
        var sendTimeout: Int32 = 2000
        zmq_setsockopt(socket, ZMQ_SNDTIMEO, &sendTimeout, 4)
        if var hwm = receiveHWM {
            zmq_setsockopt(socket, ZMQ_RCVHWM, &hwm, 4)
            var buf: Int32 = 65536
            zmq_setsockopt(socket, ZMQ_RCVBUF, &buf, 4)
        }
        if let serverKey, let keys {
            serverKey.bytes.withUnsafeBytes { _ = zmq_setsockopt(socket, ZMQ_CURVE_SERVERKEY, $0.baseAddress, 32) }
            keys.publicKey.bytes.withUnsafeBytes { _ = zmq_setsockopt(socket, ZMQ_CURVE_PUBLICKEY, $0.baseAddress, 32) }
            keys.secretKey.bytes.withUnsafeBytes { _ = zmq_setsockopt(socket, ZMQ_CURVE_SECRETKEY, $0.baseAddress, 32) }
        }
        zmq_connect(socket, endpoint)
    }

    func send(_ bytes: [UInt8], more: Bool = false) {
        _ = bytes.withUnsafeBytes { zmq_send(socket, $0.baseAddress, $0.count, more ? ZMQ_SNDMORE : 0) }
    }

    /// Receives one message, waiting at most `ms`.
    func receive(timeoutMs: Int32 = 2000) -> [UInt8]? {
        var item = zmq_pollitem_t(socket: socket, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
        guard zmq_poll(&item, 1, Int(timeoutMs)) > 0 else { return nil }
        var msg = zmq_msg_t()
        zmq_msg_init(&msg)
        defer { zmq_msg_close(&msg) }
        guard zmq_msg_recv(&msg, socket, 0) >= 0 else { return nil }
        return Array(UnsafeRawBufferPointer(start: zmq_msg_data(&msg), count: zmq_msg_size(&msg)))
    }

    deinit {
        zmq_close(socket)
        zmq_ctx_term(ctx)
    }
}

let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

func vectorBytes(_ folder: String, _ name: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: repoRoot.appendingPathComponent("Protocol/vectors/\(folder)/\(name).bin")))
}

func frameBytes(agent: String, sequence: UInt64, widthIndex: UInt8 = 3) -> [UInt8] {
    var h = TestAgent.header
    h.agentID = agent
    h.sequence = sequence
    h.widthIndex = widthIndex
    h.codec = .none
    var out = [UInt8](repeating: 0, count: FeatureFrameEncoder.maxEncodedLength(h))
    let n = TestAgent.dense.withUnsafeBufferPointer { d in
        out.withUnsafeMutableBytes { FeatureFrameEncoder().encode(h, dense: d, mask: nil, into: $0).length }
    }
    return Array(out[0..<n])
}
