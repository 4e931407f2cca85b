import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import SlimCore

/// One HTTP listener on swift-nio: fixed routes (`GET path` → content from a closure) and,
/// optionally, the Foxglove WebSocket protocol on `/` (``FoxgloveHub``). Serves the Prometheus
/// endpoint of servers and agents (`/metrics`) and the server's live view (dashboard page and
/// WebSocket).
///
/// Hostile clients cannot hold it or grow its memory: an HTTP connection has
/// `Limits.requestSeconds` to send its request and read the answer (then it is closed and counted
/// as `request_timeout`), request heads are bounded by the HTTP parser and bodies are refused, at
/// most `Limits.maxConnections` HTTP connections and `Limits.maxWebSockets` WebSocket clients are
/// open at once (more are closed at once: `too_many_clients`), WebSocket frames from clients are
/// at most `Limits.maxClientFrameBytes`, and every WebSocket client has a bounded send queue (see
/// ``FoxgloveHub``). Everything dropped is counted by reason in ``droppedText``.
///
/// With `token` set, every request must carry it (`?token=…` or `Authorization: Bearer …`),
/// else it gets 401; `/metrics` is exempt when `tokenExempt` names it.
public final class HTTPService: Sendable {
    public struct Limits: Sendable {
        public var maxConnections = 64
        public var maxWebSockets = 16
        public var requestSeconds: Int64 = 2
        public var maxClientFrameBytes = 1 << 16
        public init() {}
    }

    /// A route's answer: content type and body, made when a request comes.
    public struct Content: Sendable {
        public var type: String
        public var body: @Sendable () -> [UInt8]
        public init(type: String, body: @escaping @Sendable () -> [UInt8]) {
            self.type = type
            self.body = body
        }
        /// Prometheus text exposition format.
        public static func prometheus(_ text: @escaping @Sendable () -> String) -> Content {
            Content(type: "text/plain; version=0.0.4") { Array(text().utf8) }
        }
    }

    public let port: Int
    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel
    let state: State

    /// Binds `host:port` (port 0: any free port, see `port`) with one event-loop thread.
    /// With `dropsMetric`, every Prometheus route's answer ends with this listener's own drop
    /// counters under that name.
    public init(
        host: String, port: Int, routes: [String: Content], foxglove: FoxgloveHub? = nil, token: String? = nil,
        tokenExempt: Set<String> = [], dropsMetric: String? = nil, limits: Limits = Limits(), logger: Logger
    ) throws {
        let state = State(
            routes: routes, foxglove: foxglove, token: token.flatMap { $0.isEmpty ? nil : $0 },
            tokenExempt: tokenExempt, dropsMetric: dropsMetric, limits: limits, logger: logger)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: ChannelOptions.Types.WriteBufferWaterMark(low: 64 << 10, high: 512 << 10))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try state.configure(channel) }
            }
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw error
        }
        self.port = channel.localAddress?.port ?? port
        self.group = group
        self.state = state
    }

    /// Installs on `channel` the pipeline the listener gives every accepted connection, and
    /// returns a reader of its drop counters: for tests and the fuzz target, on an `EmbeddedChannel`.
    public static func installConnectionPipeline(
        on channel: any Channel, routes: [String: Content], foxglove: FoxgloveHub? = nil, token: String? = nil,
        limits: Limits = Limits(), logger: Logger
    ) throws -> @Sendable () -> [String: Int] {
        let state = State(
            routes: routes, foxglove: foxglove, token: token, tokenExempt: [], dropsMetric: nil, limits: limits,
            logger: logger)
        try state.configure(channel)
        return { state.dropped.withLock { $0 } }
    }

    /// Closes the listener and every connection; returns when its thread has stopped.
    public func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }

    /// Prometheus text of what this listener dropped, by reason (request_timeout,
    /// too_many_clients, bad_request, unauthorized, bad_frame) under `name`.
    public func droppedText(name: String) -> String { state.droppedText(name: name) }

    /// Connections dropped so far, by reason.
    public var dropped: [String: Int] { state.dropped.withLock { $0 } }

    /// What every connection shares: routes, limits, counters.
    final class State: Sendable {
        let routes: [String: Content]
        let foxglove: FoxgloveHub?
        let token: String?
        let tokenExempt: Set<String>
        let dropsMetric: String?
        let limits: Limits
        let logger: Logger
        let dropped = Locked<[String: Int]>([:])
        let open = Locked<(http: Int, ws: Int)>((0, 0))

        init(
            routes: [String: Content], foxglove: FoxgloveHub?, token: String?, tokenExempt: Set<String>,
            dropsMetric: String?, limits: Limits, logger: Logger
        ) {
            self.routes = routes
            self.foxglove = foxglove
            self.token = token
            self.tokenExempt = tokenExempt
            self.dropsMetric = dropsMetric
            self.limits = limits
            self.logger = logger
        }

        func count(_ reason: String) { dropped.withLock { $0[reason, default: 0] += 1 } }

        func droppedText(name: String) -> String {
            var s =
                "# HELP \(name) Connections to this endpoint closed unanswered or cut off, by reason: request_timeout, too_many_clients, bad_request, unauthorized, bad_frame.\n# TYPE \(name) counter\n"
            for (reason, n) in dropped.withLock({ $0 }).sorted(by: { $0.key < $1.key }) {
                s += "\(name){reason=\"\(reason)\"} \(n)\n"
            }
            return s
        }

        /// The pipeline of a new connection: a connection cap, the request deadline, HTTP/1.1
        /// with the WebSocket upgrade when a hub is set, and the request handler.
        func configure(_ channel: any Channel) throws {
            let sync = channel.pipeline.syncOperations
            // The deadline's event goes to the handlers after it: the counter closes the connection.
            try sync.addHandler(
                IdleStateHandler(allTimeout: .seconds(limits.requestSeconds)), name: "deadline")
            try sync.addHandler(ConnectionCount(state: self))
            let handler = RequestHandler(state: self)
            var upgrade: NIOHTTPServerUpgradeSendableConfiguration?
            if let hub = foxglove {
                let upgrader = NIOWebSocketServerUpgrader(
                    maxFrameSize: limits.maxClientFrameBytes, automaticErrorHandling: true,
                    shouldUpgrade: { [self] channel, head in
                        channel.eventLoop.makeSucceededFuture(self.upgradeHeaders(head))
                    },
                    upgradePipelineHandler: { [self] channel, _ in
                        channel.eventLoop.makeCompletedFuture {
                            let sync = channel.pipeline.syncOperations
                            // A WebSocket client lives as long as it likes; its queue is bounded instead.
                            _ = sync.removeHandler(name: "deadline")
                            _ = sync.removeHandler(name: "request")
                            if let count = try? sync.handler(type: ConnectionCount.self) { count.websocket = true }
                            open.withLock {
                                $0.http -= 1
                                $0.ws += 1
                            }
                            try sync.addHandler(FoxgloveSession(hub: hub, state: self))
                        }
                    })
                upgrade = (upgraders: [upgrader], completionHandler: { _ in })
            }
            try sync.configureHTTPServerPipeline(withServerUpgrade: upgrade, withErrorHandling: true)
            try sync.addHandler(handler, name: "request")
        }

        /// Headers of an accepted WebSocket upgrade (the Foxglove subprotocol chosen), or nil to
        /// refuse it: wrong subprotocol, bad token, or too many clients.
        func upgradeHeaders(_ head: HTTPRequestHead) -> HTTPHeaders? {
            guard authorized(head) else {
                count("unauthorized")
                return nil
            }
            let offered = head.headers[canonicalForm: "sec-websocket-protocol"].map(String.init)
            guard let chosen = FoxgloveHub.subprotocols.first(where: offered.contains) else {
                count("bad_request")
                return nil
            }
            guard open.withLock({ $0.ws }) < limits.maxWebSockets else {
                count("too_many_clients")
                return nil
            }
            return ["Sec-WebSocket-Protocol": chosen]
        }

        func authorized(_ head: HTTPRequestHead) -> Bool {
            guard let token else { return true }
            let (path, query) = requestTarget(head.uri)
            if tokenExempt.contains(path) { return true }
            let given =
                query.split(separator: "&").first { $0.hasPrefix("token=") }.map { String($0.dropFirst(6)) }
                ?? head.headers.first(name: "authorization").flatMap {
                    $0.hasPrefix("Bearer ") ? String($0.dropFirst(7)) : nil
                }
            guard let given else { return false }
            // Compared in time independent of where they differ.
            let a = Array(given.utf8)
            let b = Array(token.utf8)
            var diff = a.count ^ b.count
            for i in 0..<min(a.count, b.count) { diff |= Int(a[i] ^ b[i]) }
            return diff == 0
        }
    }
}

/// Path and query of a request target.
func requestTarget(_ uri: String) -> (path: String, query: Substring) {
    guard let q = uri.firstIndex(of: "?") else { return (uri, "") }
    return (String(uri[..<q]), uri[uri.index(after: q)...])
}

/// Counts open HTTP connections; closes those over the cap, and those past their deadline.
final class ConnectionCount: ChannelInboundHandler {
    typealias InboundIn = NIOAny
    let state: HTTPService.State
    /// Set when the connection became a WebSocket (it then counts against maxWebSockets).
    var websocket = false
    init(state: HTTPService.State) { self.state = state }

    func channelActive(context: ChannelHandlerContext) {
        let over = state.open.withLock { o -> Bool in
            o.http += 1
            return o.http > state.limits.maxConnections
        }
        if over {
            state.count("too_many_clients")
            context.close(promise: nil)
        }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let ws = websocket
        state.open.withLock { o in
            if ws { o.ws -= 1 } else { o.http -= 1 }
        }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is IdleStateHandler.IdleStateEvent {
            state.count("request_timeout")
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        state.count("bad_request")
        context.close(promise: nil)
    }
}

/// Answers one request per connection (`Connection: close`): a route's content, 404, 401, or
/// 405 for anything but GET/HEAD; a request with a body is refused (413).
final class RequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    let state: HTTPService.State
    private var head: HTTPRequestHead?
    private var answered = false
    init(state: HTTPService.State) { self.state = state }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
        case .body:
            answered = true
            state.count("bad_request")
            respond(context, status: .payloadTooLarge, type: "text/plain", body: Array("no bodies here\n".utf8))
        case .end:
            guard let h = head else { return }
            answered = true
            answer(context, h)
        }
    }

    private func answer(_ context: ChannelHandlerContext, _ h: HTTPRequestHead) {
        guard h.method == .GET || h.method == .HEAD else {
            respond(context, status: .methodNotAllowed, type: "text/plain", body: Array("GET only\n".utf8))
            return
        }
        guard state.authorized(h) else {
            state.count("unauthorized")
            respond(
                context, status: .unauthorized, type: "text/plain",
                body: Array("a token is needed: ?token=... or Authorization: Bearer ...\n".utf8))
            return
        }
        let path = requestTarget(h.uri).path
        guard let content = state.routes[path] else {
            let known = state.routes.keys.sorted().joined(separator: ", ")
            respond(context, status: .notFound, type: "text/plain", body: Array("not found: try \(known)\n".utf8))
            return
        }
        var body = content.body()
        if let name = state.dropsMetric, content.type.hasPrefix("text/plain; version=0.0.4") {
            body += state.droppedText(name: name).utf8
        }
        respond(context, status: .ok, type: content.type, body: h.method == .HEAD ? [] : body, length: body.count)
    }

    private func respond(
        _ context: ChannelHandlerContext, status: HTTPResponseStatus, type: String, body: [UInt8], length: Int? = nil
    ) {
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: "\(length ?? body.count)")
        headers.add(name: "Connection", value: "close")
        headers.add(name: "Cache-Control", value: "no-store")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        if !body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
