import Foundation
import Logging
import SlimSensors
import SlimTransport

/// The agent's live LiDAR: a Velodyne's UDP packets (`udp://HOST:PORT`) or a capture of them
/// (`pcap:FILE`, played at its recorded pace), read on a thread of its own and assembled into
/// sweeps. Bad packets, reordering and gaps are counted (``VelodyneSweeps``) and logged at most
/// once per reason every 10 s; they never stop the stream. If the encoder is still busy when a
/// sweep completes, the older waiting sweep is dropped and counted. A sweep is also closed when
/// packets stop for 0.3 s.
public final class VelodyneInput: @unchecked Sendable {
    let source: AgentConfig.VelodyneSource
    private let logger: Logger
    private let fd: Int32
    private let capture: [Pcap.Datagram]?
    private let state = Locked(State())

    struct State {
        var assembler: VelodyneSweeps?
        var pointsPerSweep: [Int] = []
        var sweepsDropped = 0
        var datagrams = 0
        var closed = false
    }

    init(source: AgentConfig.VelodyneSource, logger: Logger) throws {
        self.source = source
        self.logger = logger
        var st = State()
        st.assembler = VelodyneSweeps(model: source.lidarModel)
        state.withLock { $0 = st }
        if source.listen.hasPrefix("pcap:") {
            let path = String(source.listen.dropFirst(5))
            guard let data = FileManager.default.contents(atPath: path) else {
                throw PipelineError("source.listen: cannot read the capture \(path)")
            }
            do { capture = try Pcap.udpPayloads(Array(data), port: 2368) } catch {
                throw PipelineError("source.listen: \(path): \(error)")
            }
            fd = -1
            logger.info("velodyne capture", metadata: ["file": "\(path)", "packets": "\(capture!.count)"])
            return
        }
        capture = nil
        let target = source.listen.dropFirst("udp://".count)
        guard let colon = target.lastIndex(of: ":"), let port = UInt16(target[target.index(after: colon)...]) else {
            throw PipelineError("source.listen: '\(source.listen)' must be udp://HOST:PORT")
        }
        let host = String(target[..<colon])
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw PipelineError("source.listen: socket: \(String(cString: strerror(errno)))") }
        var big: Int32 = 8 << 20
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(port.bigEndian)
        addr.sin_addr.s_addr = inet_addr(host == "*" ? "0.0.0.0" : host)
        let ok = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard ok == 0 else {
            let why = String(cString: strerror(errno))
            Glibc.close(fd)
            throw PipelineError("source.listen: bind \(source.listen): \(why)")
        }
        logger.info("velodyne", metadata: ["listen": "\(source.listen)", "model": "\(source.lidarModel.rawValue)"])
    }

    /// Sweeps as they complete, until `stop` is set, the capture ends or ``close()``.
    func sweeps(stop: Locked<Bool>) -> AsyncStream<[SIMD4<Float>]> {
        let (stream, continuation) = AsyncStream.makeStream(of: [SIMD4<Float>].self, bufferingPolicy: .bufferingNewest(1))
        let thread = Thread { [self] in
            var lastLog: [String: UInt64] = [:]
            var logged: [String: Int] = [:]
            func deliver(_ sweep: [SIMD4<Float>]) {
                state.withLock { $0.pointsPerSweep.append(sweep.count) }
                if case .dropped = continuation.yield(sweep) { state.withLock { $0.sweepsDropped += 1 } }
            }
            func take(_ bytes: UnsafeRawBufferPointer) {
                let (sweep, counters) = state.withLock { s -> ([SIMD4<Float>]?, [String: Int]) in
                    s.datagrams += 1
                    let sweep = s.assembler!.add(bytes)
                    return (sweep, s.assembler!.counters)
                }
                if let sweep { deliver(sweep) }
                let now = SystemClock.monotonicNs()
                for (reason, n) in counters where n != logged[reason] && now &- (lastLog[reason] ?? 0) > 10_000_000_000 {
                    lastLog[reason] = now
                    logged[reason] = n
                    self.logger.warning("velodyne packets refused or out of order", metadata: ["reason": "\(reason)", "count": "\(n)"])
                }
            }
            if let capture {
                var pacer = Pacer()  // at the capture's own timestamps
                for d in capture {
                    if stop.value || state.withLock({ $0.closed }) { break }
                    pacer.waitBlocking(for: d.timeNs)
                    d.payload.withUnsafeBytes { take($0) }
                }
            } else {
                var buf = [UInt8](repeating: 0, count: 65536)
                var quietSince = SystemClock.monotonicNs()
                while !stop.value, !state.withLock({ $0.closed }) {
                    var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                    if poll(&p, 1, 100) <= 0 {
                        if SystemClock.monotonicNs() - quietSince > 300_000_000,
                            let sweep = state.withLock({ $0.assembler!.flush() })
                        {
                            deliver(sweep)
                        }
                        continue
                    }
                    while true {
                        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                        if n < 0 { break }
                        quietSince = SystemClock.monotonicNs()
                        buf.withUnsafeBytes { take(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
                    }
                }
            }
            if let sweep = state.withLock({ $0.assembler!.flush() }) { deliver(sweep) }
            continuation.finish()
        }
        thread.name = "velodyne"
        thread.start()
        return stream
    }

    public func close() {
        state.withLock { $0.closed = true }
    }

    deinit { if fd >= 0 { Glibc.close(fd) } }

    /// For the agent's summary: packets, sweeps, points per sweep, refusals by reason.
    public var summary: [String: Any] {
        state.withLock { s in
            let a = s.assembler!
            return [
                "lidar_model": source.lidarModel.rawValue, "datagrams": s.datagrams, "sweeps": s.pointsPerSweep.count,
                "points_per_sweep": Array(s.pointsPerSweep.prefix(10_000)), "sweeps_dropped": s.sweepsDropped,
                "counters": a.counters,
            ]
        }
    }
}
