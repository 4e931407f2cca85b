import Foundation
import NIOCore
import NIOWebSocket
import SlimCore

/// The server side of the Foxglove WebSocket protocol (subprotocol `foxglove.websocket.v1`, and
/// `foxglove.sdk.v1`, the name the Foxglove SDK gives the same protocol): on connect a client gets
/// `serverInfo` and `advertise` (every channel, JSON encoding with a JSON Schema); it `subscribe`s
/// to channels by id and then gets each message published on them as a binary Message Data frame
/// (opcode 0x01, subscription id u32 LE, log time u64 LE ns, JSON payload).
///
/// Publishing never blocks and never queues without bound: a client whose socket is not
/// writable (its send queue over the connection's high watermark, 512 KiB) misses that message,
/// counted per reason in ``droppedText``. A client that sends a malformed message gets a
/// `status` error and keeps its connection; one that breaks the WebSocket framing is closed.
public final class FoxgloveHub: Sendable {
    public static let subprotocols = ["foxglove.websocket.v1", "foxglove.sdk.v1"]

    public struct Channel: Sendable {
        public var id: UInt32
        public var topic: String
        public var schemaName: String
        /// A JSON Schema (as text) of the channel's JSON messages.
        public var schema: String
        public init(id: UInt32, topic: String, schemaName: String, schema: String) {
            self.id = id
            self.topic = topic
            self.schemaName = schemaName
            self.schema = schema
        }
    }

    public let name: String
    public let channels: [Channel]
    private let sessions = Locked<[ObjectIdentifier: FoxgloveSession]>([:])
    private let counters = Locked<[String: Int]>([:])

    public init(name: String, channels: [Channel]) {
        self.name = name
        self.channels = channels
    }

    /// Sends `payload` (JSON) on `channel` to every client subscribed to it.
    public func publish(channel: UInt32, logTimeNs: UInt64, payload: [UInt8]) {
        let targets = sessions.withLock { Array($0.values) }
        for s in targets { s.send(channel: channel, logTimeNs: logTimeNs, payload: payload) }
        counters.withLock { $0["published", default: 0] += 1 }
    }

    /// Clients connected now.
    public var clientCount: Int { sessions.withLock { $0.count } }

    /// Prometheus text: clients, messages sent, and messages dropped by reason (slow_client) and
    /// client messages refused (bad_message).
    public var prometheusText: String {
        let c = counters.withLock { $0 }
        var s = "# HELP slimsplit_live_clients Foxglove WebSocket clients connected.\n# TYPE slimsplit_live_clients gauge\n"
        s += "slimsplit_live_clients \(clientCount)\n"
        s += "# HELP slimsplit_live_messages_total Messages sent to live clients.\n# TYPE slimsplit_live_messages_total counter\n"
        s += "slimsplit_live_messages_total \(c["sent"] ?? 0)\n"
        s += "# HELP slimsplit_live_dropped_total Live messages not sent or refused, by reason.\n# TYPE slimsplit_live_dropped_total counter\n"
        for r in ["slow_client", "bad_message"] { s += "slimsplit_live_dropped_total{reason=\"\(r)\"} \(c[r] ?? 0)\n" }
        return s
    }

    func count(_ what: String, _ n: Int = 1) { counters.withLock { $0[what, default: 0] += n } }
    func add(_ s: FoxgloveSession) { sessions.withLock { $0[ObjectIdentifier(s)] = s } }
    func remove(_ s: FoxgloveSession) { _ = sessions.withLock { $0.removeValue(forKey: ObjectIdentifier(s)) } }

    var serverInfo: String {
        json(["op": "serverInfo", "name": name, "capabilities": [String](), "supportedEncodings": ["json"],
              "metadata": [String: String](), "sessionId": "\(UInt64(Date().timeIntervalSince1970 * 1000))"])
    }

    var advertise: String {
        json([
            "op": "advertise",
            "channels": channels.map {
                ["id": Int($0.id), "topic": $0.topic, "encoding": "json", "schemaName": $0.schemaName,
                 "schema": $0.schema, "schemaEncoding": "jsonschema"] as [String: Any]
            },
        ])
    }
}

func json(_ object: [String: Any]) -> String {
    guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return "{}" }
    return String(decoding: data, as: UTF8.self)
}

/// One Foxglove client on an upgraded connection. Subscriptions change on its event loop and
/// are read by publishers from any thread (under a lock).
final class FoxgloveSession: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame
    let hub: FoxgloveHub
    let state: HTTPService.State
    /// Subscription id → channel id.
    private let subscriptions = Locked<[UInt32: UInt32]>([:])
    private let channel = Locked<(any NIOCore.Channel)?>(nil)

    init(hub: FoxgloveHub, state: HTTPService.State) {
        self.hub = hub
        self.state = state
    }

    func handlerAdded(context: ChannelHandlerContext) {
        channel.withLock { $0 = context.channel }
        sendText(context, hub.serverInfo)
        sendText(context, hub.advertise)
        context.flush()
        hub.add(self)
    }

    func channelInactive(context: ChannelHandlerContext) {
        hub.remove(self)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        state.count("bad_frame")
        hub.remove(self)
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            var data = frame.unmaskedData
            let text = data.readString(length: data.readableBytes) ?? ""
            if let problem = handle(text) {
                hub.count("bad_message")
                sendText(context, json(["op": "status", "level": 2, "message": problem]))
                context.flush()
            }
        case .ping:
            var data = frame.unmaskedData
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: data.readSlice(length: data.readableBytes) ?? data)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: context.channel.allocator.buffer(capacity: 0))
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(close)).whenComplete { _ in bound.value.close(promise: nil) }
        default:
            break
        }
    }

    /// Applies a client message; returns what is wrong with it, or nil.
    private func handle(_ text: String) -> String? {
        guard let obj = (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any],
            let op = obj["op"] as? String
        else { return "not a JSON object with an op" }
        switch op {
        case "subscribe":
            guard let subs = obj["subscriptions"] as? [[String: Any]] else { return "subscribe: no subscriptions" }
            for s in subs {
                guard let id = (s["id"] as? NSNumber)?.uint32Value, let ch = (s["channelId"] as? NSNumber)?.uint32Value,
                    hub.channels.contains(where: { $0.id == ch })
                else { return "subscribe: bad id or unknown channelId in \(s)" }
                subscriptions.withLock { $0[id] = ch }
            }
            return nil
        case "unsubscribe":
            guard let ids = obj["subscriptionIds"] as? [NSNumber] else { return "unsubscribe: no subscriptionIds" }
            subscriptions.withLock { for i in ids { $0.removeValue(forKey: i.uint32Value) } }
            return nil
        default:
            return "unsupported op \(op)"
        }
    }

    private func sendText(_ context: ChannelHandlerContext, _ text: String) {
        let frame = WebSocketFrame(fin: true, opcode: .text, data: context.channel.allocator.buffer(string: text))
        context.write(wrapOutboundOut(frame), promise: nil)
    }

    /// Queues one Message Data frame per subscription to `channel`, unless the socket is not
    /// writable (then the message is dropped and counted).
    func send(channel ch: UInt32, logTimeNs: UInt64, payload: [UInt8]) {
        let subs = subscriptions.withLock { $0.filter { $0.value == ch }.map(\.key) }
        guard !subs.isEmpty, let channel = channel.withLock({ $0 }) else { return }
        let hub = self.hub
        channel.eventLoop.execute {
            guard channel.isActive else { return }
            guard channel.isWritable else {
                hub.count("slow_client", subs.count)
                return
            }
            for id in subs {
                var b = channel.allocator.buffer(capacity: 13 + payload.count)
                b.writeInteger(UInt8(1))
                b.writeInteger(id, endianness: .little)
                b.writeInteger(logTimeNs, endianness: .little)
                b.writeBytes(payload)
                channel.write(WebSocketFrame(fin: true, opcode: .binary, data: b), promise: nil)
            }
            channel.flush()
            hub.count("sent", subs.count)
        }
    }
}
