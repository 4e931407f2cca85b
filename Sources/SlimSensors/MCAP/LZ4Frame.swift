import CLZ4

/// LZ4 frame format (what MCAP's `lz4` chunk compression is), through liblz4.
enum LZ4Frame {
    static func compress(_ src: [UInt8]) -> [UInt8] {
        var prefs = LZ4F_preferences_t()
        prefs.frameInfo.contentSize = UInt64(src.count)
        let bound = LZ4F_compressFrameBound(src.count, &prefs)
        var out = [UInt8](repeating: 0, count: bound)
        let n = src.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { d in LZ4F_compressFrame(d.baseAddress, bound, s.baseAddress, src.count, &prefs)
            }
        }
        precondition(LZ4F_isError(n) == 0, "LZ4F_compressFrame failed")
        out.removeLast(out.count - n)
        return out
    }

    /// Decompresses a whole frame into `dst`, which must be exactly the uncompressed size.
    /// Returns nil (with liblz4's reason) when the data is not one valid frame of that size.
    static func decompress(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer) -> String? {
        var ctx: OpaquePointer?
        guard LZ4F_isError(LZ4F_createDecompressionContext(&ctx, UInt32(LZ4F_VERSION))) == 0 else {
            return "cannot create an LZ4 context"
        }
        defer { LZ4F_freeDecompressionContext(ctx) }
        var inPos = 0
        var outPos = 0
        while true {
            var inSize = src.count - inPos
            var outSize = dst.count - outPos
            let hint = LZ4F_decompress(
                ctx, dst.baseAddress.map { $0 + outPos }, &outSize,
                src.baseAddress.map { $0 + inPos }, &inSize, nil)
            if LZ4F_isError(hint) != 0 { return String(cString: LZ4F_getErrorName(hint)) }
            inPos += inSize
            outPos += outSize
            if hint == 0 { break }  // frame complete
            if inSize == 0 && outSize == 0 { return "LZ4 frame is truncated" }
            if outPos == dst.count && inPos == src.count { return "LZ4 frame is truncated" }
        }
        guard outPos == dst.count else { return "LZ4 frame decodes to \(outPos) bytes, the chunk says \(dst.count)" }
        return nil
    }
}
