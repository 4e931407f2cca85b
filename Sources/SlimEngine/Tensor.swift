/// A feature map of batch 1 in NHWC layout (channels innermost).
///
/// Why NHWC: a convolution's inner loop then runs over contiguous input channels for one tap
/// and vectorizes over contiguous output channels, on x86 and ARM alike; int8 dot-product
/// instructions (VNNI `vpdpbusd`, ARM `sdot`) consume four consecutive channels per lane; and a
/// BEV cell's features are contiguous, so skipping an empty cell skips contiguous memory.
///
/// Storage is allocated once with room for the largest shape it will hold; `reshape` within
/// that capacity allocates nothing (width switching reuses the same buffers). There are 64 bytes
/// of slack after the last element, which int8 kernels may read (never write).
public final class Tensor<Element: BitwiseCopyable & Numeric>: @unchecked Sendable {
    public private(set) var height: Int
    public private(set) var width: Int
    public private(set) var channels: Int
    public let capacity: Int
    public let storage: UnsafeMutableBufferPointer<Element>

    public init(height: Int, width: Int, channels: Int, capacity: Int? = nil) {
        self.height = height
        self.width = width
        self.channels = channels
        let cap = capacity ?? height * width * channels
        precondition(cap >= height * width * channels)
        self.capacity = cap
        let slack = (64 + MemoryLayout<Element>.stride - 1) / MemoryLayout<Element>.stride
        let raw = UnsafeMutableRawPointer.allocate(
            byteCount: (cap + slack) * MemoryLayout<Element>.stride, alignment: 64)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: (cap + slack) * MemoryLayout<Element>.stride)
        storage = UnsafeMutableBufferPointer(start: raw.bindMemory(to: Element.self, capacity: cap + slack), count: cap)
    }

    deinit { UnsafeMutableRawPointer(storage.baseAddress!).deallocate() }

    public var count: Int { height * width * channels }
    public var pointer: UnsafeMutablePointer<Element> { storage.baseAddress! }
    public var values: UnsafeMutableBufferPointer<Element> { UnsafeMutableBufferPointer(rebasing: storage[0..<count]) }

    /// Changes the logical shape; traps if it does not fit the capacity. Allocates nothing.
    public func reshape(height: Int, width: Int, channels: Int) {
        precondition(
            height * width * channels <= capacity, "shape \(height)x\(width)x\(channels) exceeds capacity \(capacity)")
        self.height = height
        self.width = width
        self.channels = channels
    }

    @inlinable public subscript(y: Int, x: Int, c: Int) -> Element {
        get { storage[(y * width + x) * channels + c] }
        set { storage[(y * width + x) * channels + c] = newValue }
    }

    public func fill(_ v: Element) { values.update(repeating: v) }

    /// Copies from a batch-1 NCHW array (PyTorch's layout).
    public func load(nchw: UnsafeBufferPointer<Element>) {
        precondition(nchw.count == count)
        let hw = height * width
        for c in 0..<channels { for i in 0..<hw { storage[i * channels + c] = nchw[c * hw + i] } }
    }

    /// The values as a batch-1 NCHW array.
    public func nchw() -> [Element] {
        let hw = height * width
        var out = [Element](repeating: 0, count: count)
        for c in 0..<channels { for i in 0..<hw { out[c * hw + i] = storage[i * channels + c] } }
        return out
    }
}

public typealias FloatTensor = Tensor<Float>
public typealias QTensor = Tensor<UInt8>

/// Runs `layers` in order from `x`, each writing into whichever of `a` and `b` the layer before it
/// did not (so no layer reads the buffer it writes, and nothing is allocated). Returns the last
/// output (`x` itself when `layers` is empty); the other buffer is free for the next step.
@inlinable
public func runChain<Layer, T: AnyObject>(
    _ layers: [Layer], from x: T, between a: T, _ b: T, _ run: (Layer, T, T) -> Void
) -> T {
    var x = x
    var y = a
    for layer in layers {
        run(layer, x, y)
        x = y
        y = (y === a) ? b : a
    }
    return x
}
