import CZeroMQ
import Glibc

/// A failed libzmq call: the operation, errno and libzmq's text for it.
public struct ZMQError: Error, CustomStringConvertible, Sendable {
    public let operation: String
    public let code: Int32

    public init(_ operation: String, code: Int32 = zmq_errno()) {
        self.operation = operation
        self.code = code
    }

    public var description: String { "\(operation): \(String(cString: zmq_strerror(code))) (errno \(code))" }
}

@inline(__always)
func check(_ rc: Int32, _ operation: @autoclosure () -> String) throws(ZMQError) {
    if rc != 0 { throw ZMQError(operation()) }
}

/// One libzmq context. Each endpoint owns its own, so that each can run its own ZAP handler.
final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer
    private let terminated = Locked(false)

    init(ioThreads: Int32 = 1) {
        handle = zmq_ctx_new()
        zmq_ctx_set(handle, ZMQ_IO_THREADS, ioThreads)
    }

    /// Waits until every socket of the context is closed and its connections and listeners
    /// are gone (so a port can be bound again at once). Idempotent.
    func terminate() {
        let first = terminated.withLock { t -> Bool in
            defer { t = true }
            return !t
        }
        if first { zmq_ctx_term(handle) }
    }

    deinit { terminate() }
}

/// A libzmq socket. Not thread-safe: exactly one thread uses it (see `SocketLoop`).
final class ZMQSocket {
    let handle: UnsafeMutableRawPointer
    let context: ZMQContext  // keeps the context alive while the socket is open
    private var closed = false

    init(_ context: ZMQContext, type: Int32) throws(ZMQError) {
        guard let h = zmq_socket(context.handle, type) else { throw ZMQError("zmq_socket") }
        handle = h
        self.context = context
    }

    func set(_ option: Int32, _ value: Int32) throws(ZMQError) {
        var v = value
        try check(zmq_setsockopt(handle, option, &v, MemoryLayout<Int32>.size), "zmq_setsockopt(\(option))")
    }

    func set(_ option: Int32, int64 value: Int64) throws(ZMQError) {
        var v = value
        try check(zmq_setsockopt(handle, option, &v, MemoryLayout<Int64>.size), "zmq_setsockopt(\(option))")
    }

    func set(_ option: Int32, bytes: [UInt8]) throws(ZMQError) {
        try check(
            bytes.withUnsafeBytes { zmq_setsockopt(handle, option, $0.baseAddress, $0.count) },
            "zmq_setsockopt(\(option))")
    }

    func bind(_ endpoint: String) throws(ZMQError) { try check(zmq_bind(handle, endpoint), "zmq_bind(\(endpoint))") }
    func connect(_ endpoint: String) throws(ZMQError) {
        try check(zmq_connect(handle, endpoint), "zmq_connect(\(endpoint))")
    }

    /// The endpoint actually bound (resolves `tcp://127.0.0.1:0` to its port).
    var lastEndpoint: String {
        var buf = [CChar](repeating: 0, count: 1024)
        var len = buf.count
        zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buf, &len)
        return cString(buf)
    }

    var events: Int32 {
        var v: Int32 = 0
        var len = MemoryLayout<Int32>.size
        zmq_getsockopt(handle, ZMQ_EVENTS, &v, &len)
        return v
    }

    func close() {
        guard !closed else { return }
        closed = true
        zmq_close(handle)
    }

    deinit { close() }
}

/// An owned `zmq_msg_t`. Received messages are handed to consumers in this box, so their bytes
/// are never copied; the message is closed when the box goes away, on whatever thread that is.
public final class ZMQMessage: ReceivedBytes, @unchecked Sendable {
    let msg: UnsafeMutablePointer<zmq_msg_t>

    init() {
        msg = .allocate(capacity: 1)
        zmq_msg_init(msg)
    }

    init(size: Int) {
        msg = .allocate(capacity: 1)
        zmq_msg_init_size(msg, size)
    }

    deinit {
        zmq_msg_close(msg)
        msg.deallocate()
    }

    public var count: Int { zmq_msg_size(msg) }

    /// The message's bytes; valid while this box is alive.
    public var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: zmq_msg_data(msg), count: zmq_msg_size(msg))
    }

    var mutableBytes: UnsafeMutableRawBufferPointer {
        UnsafeMutableRawBufferPointer(start: zmq_msg_data(msg), count: zmq_msg_size(msg))
    }

    /// A metadata property of a received message, such as "User-Id" (set by the ZAP handler) or
    /// "Peer-Address".
    public func property(_ name: String) -> String? {
        guard let p = zmq_msg_gets(msg, name) else { return nil }
        return String(cString: p)
    }
}

/// The string in a NUL-terminated C buffer (without the deprecated array overload).
public func cString(_ buffer: [CChar]) -> String {
    buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
}
