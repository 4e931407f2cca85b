import SlimSensors

// The ROS 2 CDR decoders (PointCloud2 with any fields, types, strides and endianness,
// PoseStamped, Detection3DArray, Visibility). The first byte picks the message type.
// Invariant: what decodes, encoded by SlimSplit, decodes again to the same encoding (a fixed
// point after one round: the decoders normalize layouts and repair strings, never drift).

private var points: [SIMD4<Float>] = []
private var again: [SIMD4<Float>] = []

func fuzzCDR(_ input: UnsafeRawBufferPointer) {
    guard let kind = input.first else { return }
    let body = UnsafeRawBufferPointer(rebasing: input.dropFirst())
    switch kind % 4 {
    case 0:
        guard let header = try? PointCloud2.decode(body, into: &points) else { return }
        invariant(
            points.allSatisfy { $0.x.isFinite && $0.y.isFinite && $0.z.isFinite && $0.w.isFinite },
            "PointCloud2 delivered a non-finite point")
        let bytes = PointCloud2.encode(header: header, points: points)
        let h2 = bytes.withUnsafeBytes { try? PointCloud2.decode($0, into: &again) }
        invariant(h2 == header && again == points, "PointCloud2 does not survive its own encoding")
    case 1:
        fixedPoint(body, PoseStamped.decode) { $0.encoded() }
    case 2:
        fixedPoint(body, Detection3DArray.decode) { $0.encoded() }
    default:
        fixedPoint(body, Visibility.decode) { $0.encoded() }
    }
}

private func fixedPoint<M>(
    _ body: UnsafeRawBufferPointer, _ decode: (UnsafeRawBufferPointer) throws -> M,
    _ encode: (M) -> [UInt8]
) {
    guard let m = try? decode(body) else { return }
    let once = encode(m)
    guard let m2 = once.withUnsafeBytes({ try? decode($0) }) else {
        fatalError("\(M.self) does not decode its own encoding")
    }
    invariant(encode(m2) == once, "\(M.self) changes when encoded and decoded again")
}
