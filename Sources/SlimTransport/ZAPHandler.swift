import CZeroMQ
import Logging
import Synchronization

/// The server's ZAP handler (RFC 27): accepts a Curve client only when its public key is in the
/// allow-list, and names it so that received messages carry the key's name as "User-Id".
///
/// Runs on the server socket's thread; its socket must be bound before the server socket binds.
final class ZAPHandler {
    static let endpoint = "inproc://zeromq.zap.01"
    let socket: ZMQSocket
    let allowList: CurveAllowList
    let rejected: Locked<[String: Int]>
    let log: RateLimitedLog

    init(context: ZMQContext, allowList: CurveAllowList, rejected: Locked<[String: Int]>, log: RateLimitedLog)
        throws(ZMQError)
    {
        socket = try ZMQSocket(context, type: ZMQ_REP)
        try socket.set(ZMQ_LINGER, 0)
        try socket.bind(Self.endpoint)
        self.allowList = allowList
        self.rejected = rejected
        self.log = log
    }

    func handleRequests() {
        while true {
            var frames: [[UInt8]] = []
            repeat {
                let m = ZMQMessage()
                guard zmq_msg_recv(m.msg, socket.handle, ZMQ_DONTWAIT) >= 0 else {
                    if frames.isEmpty { return } else { break }
                }
                frames.append(Array(m.bytes))
                if zmq_msg_more(m.msg) == 0 { break }
            } while true
            reply(to: frames)
        }
    }

    private func reply(to frames: [[UInt8]]) {
        // version, request id, domain, address, routing id, mechanism, credentials...
        let requestID = frames.count > 1 ? frames[1] : []
        var status = "400"
        var text = "malformed ZAP request"
        var user = ""
        if frames.count >= 6, String(decoding: frames[0], as: UTF8.self) == "1.0" {
            let mechanism = String(decoding: frames[5], as: UTF8.self)
            let address = String(decoding: frames[3], as: UTF8.self)
            if mechanism == "CURVE", frames.count >= 7, frames[6].count == 32 {
                let key = CurveKey(bytes: frames[6])
                if let name = allowList.names[key] {
                    status = "200"
                    text = "OK"
                    user = name
                } else {
                    text = "public key not in the allow-list"
                    rejected.withLock { $0[key.z85, default: 0] += 1 }
                    log.warning(
                        key: "unauthenticated:\(key.z85)",
                        "refused Curve client: public key not in the allow-list",
                        metadata: ["reason": "unauthenticated", "key": "\(key.z85)", "address": "\(address)"])
                }
            } else {
                text = "mechanism \(mechanism) not allowed"
                rejected.withLock { $0["mechanism:\(mechanism)", default: 0] += 1 }
            }
        }
        let parts: [[UInt8]] = [
            Array("1.0".utf8), requestID, Array(status.utf8), Array(text.utf8), Array(user.utf8), [],
        ]
        for (i, p) in parts.enumerated() {
            _ = p.withUnsafeBytes {
                zmq_send(socket.handle, $0.baseAddress, $0.count, i < parts.count - 1 ? ZMQ_SNDMORE : 0)
            }
        }
    }
}
