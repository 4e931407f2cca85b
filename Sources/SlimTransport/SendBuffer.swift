import CZeroMQ
import Synchronization

/// A fixed set of send buffers for zero-copy sends (`zmq_msg_init_data`). A buffer handed to
/// libzmq comes back to the pool from libzmq's free callback, on whatever thread libzmq runs
/// it; until then `take()` cannot return it. Nothing is allocated after `init`.
public final class SendBufferPool: Sendable {
    public let bufferSize: Int
    private let free: Mutex<[SendBuffer]>

    public init(count: Int, bufferSize: Int) {
        self.bufferSize = bufferSize
        free = Mutex([])
        let buffers = (0..<count).map { _ in SendBuffer(size: bufferSize) }
        for b in buffers { b.pool = self }
        free.withLock {
            $0 = buffers
            $0.reserveCapacity(count)
        }
    }

    /// A free buffer, or nil when all are still in libzmq's hands.
    public func take() -> SendBuffer? { free.withLock { $0.popLast() } }

    public var available: Int { free.withLock { $0.count } }

    func giveBack(_ b: SendBuffer) { free.withLock { $0.append(b) } }
}

/// One buffer of a `SendBufferPool`. Write a message into `bytes`, then pass it to
/// `DealerEndpoint.submitFrame`, or `release()` it to give it back unused.
public final class SendBuffer: @unchecked Sendable {
    public let bytes: UnsafeMutableRawBufferPointer
    // Weak: the pool owns its free buffers; a buffer still in libzmq when the pool goes away
    // just frees itself.
    weak var pool: SendBufferPool?

    init(size: Int) {
        bytes = .allocate(byteCount: size, alignment: 64)
    }

    deinit { bytes.deallocate() }

    public func release() { pool?.giveBack(self) }

    func makeMessage(length: Int) -> ZMQMessage {
        precondition(length <= bytes.count)
        let hint = Unmanaged.passRetained(self).toOpaque()
        return ZMQMessage(data: bytes.baseAddress!, length: length, hint: hint) { _, hint in
            let buffer = Unmanaged<SendBuffer>.fromOpaque(hint!).takeRetainedValue()
            buffer.release()
        }
    }
}

extension ZMQMessage {
    convenience init(
        data: UnsafeMutableRawPointer, length: Int, hint: UnsafeMutableRawPointer,
        free: @convention(c) (UnsafeMutableRawPointer?, UnsafeMutableRawPointer?) -> Void
    ) {
        self.init()
        zmq_msg_init_data(msg, data, length, free, hint)
    }
}

extension SendBuffer {
    /// A raw `zmq_msg_t` over this buffer for code that drives libzmq directly (benchmarks);
    /// the buffer returns to its pool when libzmq frees the message.
    public func zmqMessage(length: Int) -> zmq_msg_t {
        var m = zmq_msg_t()
        let hint = Unmanaged.passRetained(self).toOpaque()
        zmq_msg_init_data(
            &m, bytes.baseAddress!, length,
            { _, hint in
                Unmanaged<SendBuffer>.fromOpaque(hint!).takeRetainedValue().release()
            }, hint)
        return m
    }
}
