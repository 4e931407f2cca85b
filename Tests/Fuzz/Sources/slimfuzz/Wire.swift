import SlimWire

// The wire decoder (PROTOCOL.md): the allocating decoder and the hot-path frame decoder agree,
// and whatever is accepted re-encodes to the same message.

private let decoder = FeatureFrameDecoder()

func fuzzWire(_ input: UnsafeRawBufferPointer) {
    check(input)
    // Again with a correct CRC, so that mutations reach the body and payload checks.
    let size = input.count
    if size >= Envelope.overhead {
        var copy = Array(input)
        copy.withUnsafeMutableBytes { b in
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[0..<(size - 4)]))
            b.storeBytes(of: crc.littleEndian, toByteOffset: size - 4, as: UInt32.self)
        }
        copy.withUnsafeBytes { check($0) }
    }
}

private func check(_ bytes: UnsafeRawBufferPointer) {
    let size = bytes.count
    // The allocating decoder and the hot-path decoder must both reject or both accept, and an
    // accepted message must re-encode to something that decodes to the same value.
    let full: Result<Message, WireError> = Result { () throws(WireError) in try Message.decode(bytes) }
    var hot: RejectReason?
    do throws(WireError) {
        let env = try Envelope.open(bytes)
        if env.kind == .featureFrame { _ = try decoder.decode(env, messageLength: size) }
    } catch {
        hot = error.reason
    }
    switch full {
    case .success(let m):
        invariant(hot == nil, "hot path rejected what the full decoder accepted: \(hot!)")
        let again = try? Message.decode(m.encoded())
        invariant(again == m, "re-encoding changed the message")
    case .failure(let e):
        if case .some(let r) = hot { invariant(r == e.reason, "decoders disagree: \(r) vs \(e.reason)") }
    }
}
