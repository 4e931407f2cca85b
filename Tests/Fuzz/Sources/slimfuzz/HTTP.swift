import SlimServer

// The HTTP request handling of the Prometheus endpoints (server and agent). Invariants: no
// answer only while the head is incomplete and under the limit; every answer is a complete
// response whose Content-Length is its body's; the answer depends on the head alone (more bytes
// after it change nothing).

func fuzzHTTP(_ input: UnsafeRawBufferPointer) {
    let request = Array(input)
    let body = { "slimsplit_fuzz 1\n" }
    let complete =
        request.count >= 4
        && (0...(request.count - 4)).contains { request[$0..<($0 + 4)].elementsEqual([13, 10, 13, 10]) }
    guard let answer = MetricsEndpoint.response(to: request, body: body) else {
        invariant(
            !complete && request.count < MetricsEndpoint.maxRequestBytes, "no answer to a complete or oversized request"
        )
        return
    }
    invariant(complete || request.count >= MetricsEndpoint.maxRequestBytes, "an answer before the request was complete")
    let text = String(decoding: answer, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { fatalError("an answer without a head") }
    let head = text[..<split.lowerBound]
    let payload = text[split.upperBound...]
    invariant(
        head.hasPrefix("HTTP/1.0 200 OK") || head.hasPrefix("HTTP/1.0 404") || head.hasPrefix("HTTP/1.0 431"),
        "unknown status: \(head)")
    invariant(head.contains("Content-Length: \(payload.utf8.count)\r\n"), "Content-Length is not the body's length")
    invariant(
        MetricsEndpoint.response(to: request + Array("X-More: 1\r\n\r\n".utf8), body: body) == answer,
        "bytes after a complete head changed the answer")
}
