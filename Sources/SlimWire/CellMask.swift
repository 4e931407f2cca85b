/// The cell mask of a sparse feature frame (PROTOCOL.md §4.2): ⌈cells / 8⌉ bytes, cell `i` sent
/// when bit `i & 7` (least significant first) of byte `i >> 3` is set; padding bits are 0. The
/// one definition every reader and writer of masks uses (agent, server, codec, tests).
public enum CellMask {
    /// Bytes of a mask over `cells` cells.
    @inlinable public static func byteCount(cells: Int) -> Int { (cells + 7) >> 3 }

    @inlinable public static func contains(_ mask: UnsafeRawBufferPointer, _ cell: Int) -> Bool {
        mask[cell >> 3] & (1 << UInt8(truncatingIfNeeded: cell & 7)) != 0
    }

    @inlinable public static func contains(_ mask: [UInt8], _ cell: Int) -> Bool {
        mask[cell >> 3] & (1 << UInt8(truncatingIfNeeded: cell & 7)) != 0
    }

    /// Marks `cell` as sent.
    @inlinable public static func insert(_ cell: Int, into mask: inout [UInt8]) {
        mask[cell >> 3] |= 1 << UInt8(truncatingIfNeeded: cell & 7)
    }

    /// The mask of a list of flags, one per cell.
    public static func bytes(_ flags: [Bool]) -> [UInt8] {
        var m = [UInt8](repeating: 0, count: byteCount(cells: flags.count))
        for (i, on) in flags.enumerated() where on { insert(i, into: &m) }
        return m
    }

    /// One flag per cell (tests and tools).
    public static func flags(_ mask: UnsafeRawBufferPointer, cells: Int) -> [Bool] {
        (0..<cells).map { contains(mask, $0) }
    }
}
