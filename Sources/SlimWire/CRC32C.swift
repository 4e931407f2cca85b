import CKernels

/// CRC-32C (Castagnoli), as used by the envelope (PROTOCOL.md §3).
public enum CRC32C {
    /// CRC-32C of `bytes`, continuing from `crc` (0 to start).
    @inlinable
    public static func checksum(_ bytes: UnsafeRawBufferPointer, continuing crc: UInt32 = 0) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return crc }
        return slim_crc32c(crc, base, bytes.count)
    }

    public static func checksum(_ bytes: [UInt8]) -> UInt32 {
        bytes.withUnsafeBytes { checksum($0) }
    }

    /// True when the SSE4.2 / ARMv8 CRC instructions are in use.
    public static var isHardwareAccelerated: Bool { slim_crc32c_hardware() != 0 }
}
