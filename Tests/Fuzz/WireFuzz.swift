// libFuzzer entry point for the wire decoder. Built by scripts/fuzz-wire.sh together with the
// SlimWire sources (not part of the SwiftPM package: it has no main).

let decoder = FeatureFrameDecoder()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWire(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    check(UnsafeRawBufferPointer(start: data, count: size))
    // Again with a correct CRC, so that mutations reach the body and payload checks.
    if size >= Envelope.overhead {
        var copy = Array(UnsafeBufferPointer(start: data, count: size))
        copy.withUnsafeMutableBytes { b in
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[0..<(size - 4)]))
            b.storeBytes(of: crc.littleEndian, toByteOffset: size - 4, as: UInt32.self)
        }
        copy.withUnsafeBytes { check($0) }
    }
    return 0
}

func check(_ bytes: UnsafeRawBufferPointer) {
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
        precondition(hot == nil, "hot path rejected what the full decoder accepted: \(hot!)")
        let again = try? Message.decode(m.encoded())
        precondition(again == m, "re-encoding changed the message")
    case .failure(let e):
        if case .some(let r) = hot { precondition(r == e.reason, "decoders disagree: \(r) vs \(e.reason)") }
    }
}
