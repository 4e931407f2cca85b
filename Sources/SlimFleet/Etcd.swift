import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

/// A failure talking to etcd: the call and what went wrong.
public struct EtcdError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let problem: String
    public var description: String { "etcd \(call): \(problem)" }
}

/// A client of etcd's v3 HTTP/JSON gateway (`/v3/kv/put`, `/v3/lease/grant`, …; etcd ≥ 3.4),
/// on swift-nio, one short connection per call. Keys and values are base64 in the gateway's
/// JSON, 64-bit ids and revisions are decimal strings; both are handled here.
public struct EtcdClient: Sendable {
    public let host: String
    public let port: Int
    /// A call that has not answered in this long fails (etcd answers in milliseconds).
    public var timeout: TimeAmount = .seconds(2)

    /// - Parameter url: `http://host:port`, the etcd client URL.
    public init(url: String) throws(EtcdError) {
        guard url.hasPrefix("http://") else {
            throw EtcdError(call: "connect", problem: "'\(url)' must be http://host:port (the gateway, no TLS here)")
        }
        let rest = url.dropFirst(7).split(separator: "/").first.map(String.init) ?? ""
        guard let colon = rest.lastIndex(of: ":"), let port = Int(rest[rest.index(after: colon)...]),
            (1...65535).contains(port), colon != rest.startIndex
        else { throw EtcdError(call: "connect", problem: "'\(url)' must name a host and a port") }
        host = String(rest[..<colon])
        self.port = port
    }

    /// Grants a lease; returns its id. Keys put under it vanish `ttl` seconds after the last keep-alive.
    public func grant(ttlSeconds: Int) async throws(EtcdError) -> Int64 {
        let r = try await call("/v3/lease/grant", ["TTL": "\(ttlSeconds)"])
        guard let id = Self.int64(r["ID"]) else { throw EtcdError(call: "lease/grant", problem: "no ID in \(r)") }
        return id
    }

    /// Renews a lease; returns its remaining TTL in seconds (0 or less: the lease is gone).
    public func keepAlive(lease: Int64) async throws(EtcdError) -> Int {
        let r = try await call("/v3/lease/keepalive", ["ID": "\(lease)"])
        let result = r["result"] as? [String: Any] ?? r
        return Int(Self.int64(result["TTL"]) ?? 0)
    }

    public func revoke(lease: Int64) async throws(EtcdError) {
        _ = try await call("/v3/lease/revoke", ["ID": "\(lease)"])
    }

    /// Puts `value` at `key`, attached to `lease` when given.
    public func put(_ key: String, _ value: [UInt8], lease: Int64? = nil) async throws(EtcdError) {
        var body: [String: Any] = ["key": Self.b64(Array(key.utf8)), "value": Self.b64(value)]
        if let lease { body["lease"] = "\(lease)" }
        _ = try await call("/v3/kv/put", body)
    }

    /// Every key starting with `prefix`, with its value and the lease it is attached to (0: none).
    public func range(prefix: String) async throws(EtcdError) -> [(key: String, value: [UInt8], lease: Int64)] {
        var end = Array(prefix.utf8)
        if let last = end.indices.last { end[last] &+= 1 }
        let r = try await call("/v3/kv/range", ["key": Self.b64(Array(prefix.utf8)), "range_end": Self.b64(end)])
        let kvs = r["kvs"] as? [[String: Any]] ?? []
        return kvs.compactMap { kv in
            guard let k = (kv["key"] as? String).flatMap(Self.unb64) else { return nil }
            let v = (kv["value"] as? String).flatMap(Self.unb64) ?? []
            return (String(decoding: k, as: UTF8.self), v, Self.int64(kv["lease"]) ?? 0)
        }
    }

    public func delete(_ key: String) async throws(EtcdError) {
        _ = try await call("/v3/kv/deleterange", ["key": Self.b64(Array(key.utf8))])
    }

    // MARK: - The gateway call

    private func call(_ path: String, _ body: [String: Any]) async throws(EtcdError) -> [String: Any] {
        let name = String(path.dropFirst(4))
        let json: Data
        do { json = try JSONSerialization.data(withJSONObject: body) } catch {
            throw EtcdError(call: name, problem: "cannot encode the request: \(error)")
        }
        let (status, bytes): (Int, [UInt8])
        do { (status, bytes) = try await post(path, Array(json)) } catch let e as EtcdError { throw e } catch {
            throw EtcdError(call: name, problem: "\(host):\(port): \(error)")
        }
        let object: Any?
        do { object = try JSONSerialization.jsonObject(with: Data(bytes)) } catch { object = nil }
        guard status == 200, let dict = object as? [String: Any] else {
            let text = String(decoding: bytes.prefix(300), as: UTF8.self)
            throw EtcdError(call: name, problem: "HTTP \(status): \(text)")
        }
        if let err = dict["error"] as? [String: Any] {  // a streaming call's error comes in the body
            throw EtcdError(call: name, problem: "\(err["message"] ?? err)")
        }
        return dict
    }

    private func post(_ path: String, _ body: [UInt8]) async throws -> (Int, [UInt8]) {
        // One event loop for the channel, the promise and the deadline: the collector alone
        // completes the promise (the deadline closes the channel, which fails it if unanswered).
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        let promise = loop.makePromise(of: (Int, [UInt8]).self)
        let timeout = self.timeout
        let channel: any Channel
        do {
            channel = try await ClientBootstrap(group: loop)
                .connectTimeout(timeout)
                .channelInitializer { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHTTPClientHandlers()
                        try ch.pipeline.syncOperations.addHandler(ResponseCollector(promise: promise))
                    }
                }
                .connect(host: host, port: port).get()
        } catch {
            promise.fail(error)  // no channel, so no collector to complete it
            throw error
        }
        let deadline = channel.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
        var head = HTTPRequestHead(version: .http1_1, method: .POST, uri: path)
        head.headers.add(name: "Host", value: "\(host):\(port)")
        head.headers.add(name: "Content-Type", value: "application/json")
        head.headers.add(name: "Content-Length", value: "\(body.count)")
        head.headers.add(name: "Connection", value: "close")
        channel.write(HTTPClientRequestPart.head(head), promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(ByteBuffer(bytes: body))), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
        defer {
            deadline.cancel()
            channel.close(promise: nil)
        }
        return try await promise.futureResult.get()
    }

    static func b64(_ b: [UInt8]) -> String { Data(b).base64EncodedString() }
    static func unb64(_ s: String) -> [UInt8]? { Data(base64Encoded: s).map(Array.init) }
    static func int64(_ v: Any?) -> Int64? {
        if let s = v as? String { return Int64(s) }
        if let n = v as? NSNumber { return n.int64Value }
        return nil
    }
}

/// Collects one HTTP response (status and body; chunked or not) and completes the promise at its end.
private final class ResponseCollector: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    private let promise: EventLoopPromise<(Int, [UInt8])>
    private var status = 0
    private var body: [UInt8] = []
    /// Streaming calls (lease/keepalive) answer in one chunk and keep the stream open: the first
    /// complete JSON object ends the call.
    private var streaming = false
    private var done = false

    init(promise: EventLoopPromise<(Int, [UInt8])>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            status = Int(h.status.code)
            streaming = h.headers["Transfer-Encoding"].contains { $0.lowercased().contains("chunked") }
        case .body(var b):
            guard body.count + b.readableBytes <= 1 << 20 else {
                finish(.failure(EtcdError(call: "response", problem: "over 1 MiB")))
                context.close(promise: nil)
                return
            }
            body += b.readBytes(length: b.readableBytes) ?? []
            if streaming, (try? JSONSerialization.jsonObject(with: Data(body))) != nil {
                finish(.success((status, body)))
            }
        case .end:
            finish(.success((status, body)))
        }
    }

    private func finish(_ r: Result<(Int, [UInt8]), any Error>) {
        guard !done else { return }
        done = true
        promise.completeWith(r)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(.failure(error))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(
            .failure(EtcdError(call: "response", problem: "connection closed before the response ended (or timed out)"))
        )
    }
}
