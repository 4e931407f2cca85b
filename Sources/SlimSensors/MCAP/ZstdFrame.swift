import CZstd

/// Zstandard frames (MCAP's `zstd` chunk compression, the official writers' default), through
/// libzstd.
enum ZstdFrame {
    /// One frame at `level` (libzstd's 1…19; 3 is its default).
    static func compress(_ src: [UInt8], level: Int32 = 3) -> [UInt8] {
        let bound = ZSTD_compressBound(src.count)
        var out = [UInt8](repeating: 0, count: bound)
        let n = src.withUnsafeBytes { s in
            out.withUnsafeMutableBytes { d in ZSTD_compress(d.baseAddress, bound, s.baseAddress, src.count, level) }
        }
        precondition(ZSTD_isError(n) == 0, "ZSTD_compress failed")
        out.removeLast(out.count - n)
        return out
    }

    /// Decompresses `src` into `dst`, which must be exactly the uncompressed size (the output can
    /// never grow past it, whatever the input claims). Returns nil, or libzstd's reason when the
    /// data is not zstd frames of exactly that size.
    static func decompress(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawBufferPointer) -> String? {
        guard let ctx = ZSTD_createDCtx() else { return "cannot create a zstd context" }
        defer { ZSTD_freeDCtx(ctx) }
        let n = ZSTD_decompressDCtx(ctx, dst.baseAddress, dst.count, src.baseAddress, src.count)
        if ZSTD_isError(n) != 0 { return String(cString: ZSTD_getErrorName(n)) }
        guard n == dst.count else { return "zstd data decodes to \(n) bytes, the chunk says \(dst.count)" }
        return nil
    }
}
