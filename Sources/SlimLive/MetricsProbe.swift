import Foundation

/// The client side of an ``HTTPService`` Prometheus route, for health checks: one blocking HTTP/1.0 GET with a
/// deadline on every step (connect, send, each read), to a numeric IPv4/IPv6 host or a name.
/// Success is a `200` status line; the body is returned. Reads at most 64 MiB.
public enum MetricsProbe {
    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    public static func get(host: String, port: Int, path: String, timeoutSeconds: Double) -> Result<String, Failure> {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, "\(port)", &hints, &list) == 0, let ai = list else {
            return .failure(Failure(description: "cannot resolve \(host)"))
        }
        defer { freeaddrinfo(list) }
        let fd = socket(ai.pointee.ai_family, ai.pointee.ai_socktype, ai.pointee.ai_protocol)
        guard fd >= 0 else { return .failure(Failure(description: "socket: \(String(cString: strerror(errno)))")) }
        defer { close(fd) }
        let usec = max(Int(timeoutSeconds * 1e6), 1000)
        var tv = timeval(tv_sec: usec / 1_000_000, tv_usec: .init(usec % 1_000_000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        guard connect(fd, ai.pointee.ai_addr, ai.pointee.ai_addrlen) == 0 else {
            return .failure(Failure(description: "connect: \(String(cString: strerror(errno)))"))
        }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(host)\r\n\r\n".utf8)
        guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, 0) }) == request.count else {
            return .failure(Failure(description: "send: \(String(cString: strerror(errno)))"))
        }
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while answer.count < 64 << 20 {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            guard n > 0 else {
                let timedOut = errno == EAGAIN || errno == EWOULDBLOCK
                let why = timedOut ? "no answer within \(timeoutSeconds) s" : "recv: \(String(cString: strerror(errno)))"
                return .failure(Failure(description: why))
            }
            answer += chunk[0..<n]
        }
        let text = String(decoding: answer, as: UTF8.self)
        guard let status = text.split(separator: "\r\n", maxSplits: 1).first, status.contains(" 200 ") else {
            return .failure(Failure(description: "answered \(text.prefix(60).debugDescription)"))
        }
        let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
        return .success(body)
    }
}
