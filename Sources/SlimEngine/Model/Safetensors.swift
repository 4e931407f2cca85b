import Foundation

/// Element types of safetensors files.
public enum DType: String, Sendable, CaseIterable {
    case bool = "BOOL"
    case u8 = "U8"
    case i8 = "I8"
    case u16 = "U16"
    case i16 = "I16"
    case f16 = "F16"
    case bf16 = "BF16"
    case u32 = "U32"
    case i32 = "I32"
    case f32 = "F32"
    case u64 = "U64"
    case i64 = "I64"
    case f64 = "F64"

    public var size: Int {
        switch self {
        case .bool, .u8, .i8: 1
        case .u16, .i16, .f16, .bf16: 2
        case .u32, .i32, .f32: 4
        case .u64, .i64, .f64: 8
        }
    }
}

/// A broken or hostile model file: what is wrong, and which tensor or key.
public struct ModelFileError: Error, CustomStringConvertible, Sendable, Equatable {
    public enum Kind: String, Sendable { case io, header, tensor, architecture }
    public let kind: Kind
    public let file: String
    public let subject: String
    public let problem: String

    public init(kind: Kind, file: String, subject: String, problem: String) {
        self.kind = kind
        self.file = file
        self.subject = subject
        self.problem = problem
    }

    public var description: String {
        subject.isEmpty ? "\(file): \(problem)" : "\(file): \(subject): \(problem)"
    }
}

/// One tensor of a safetensors file: its dtype, shape and bytes (inside the file's buffer).
public struct SafetensorsTensor: Sendable {
    public let name: String
    public let dtype: DType
    public let shape: [Int]
    public let range: Range<Int>
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A safetensors file, read whole and validated before any tensor is handed out.
///
/// Checks (any failure is a `ModelFileError` naming the tensor): the 8-byte header length is at
/// most `maxHeaderBytes` and inside the file; the header is a JSON object of tensors (plus an
/// optional `__metadata__` map of strings); each dtype is known; each shape has at most 8
/// non-negative dimensions whose product does not overflow and stays under `maxElements`; each
/// `data_offsets` pair is ordered and inside the data section; the byte range equals shape ×
/// dtype size; ranges do not overlap and cover the data section with no hole.
public struct Safetensors: Sendable {
    public static let maxHeaderBytes = 100 << 20
    public static let maxElements = 1 << 31
    public static let maxFileBytes = 4 << 30

    public let file: String
    public let bytes: [UInt8]
    public let dataStart: Int
    public let metadata: [String: String]
    public let tensors: [String: SafetensorsTensor]

    public init(contentsOf path: String) throws(ModelFileError) {
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw ModelFileError(kind: .io, file: path, subject: "", problem: "cannot open the file")
        }
        defer { try? h.close() }
        let size = (try? h.seekToEnd()).map(Int.init) ?? -1
        guard size >= 0, size <= Self.maxFileBytes else {
            throw ModelFileError(
                kind: .io, file: path, subject: "",
                problem: "file size \(size) is not readable or over \(Self.maxFileBytes) bytes")
        }
        try? h.seek(toOffset: 0)
        let data = (try? h.readToEnd()) ?? Data()
        try self.init(bytes: [UInt8](data), file: path)
    }

    public init(bytes: [UInt8], file: String = "<memory>") throws(ModelFileError) {
        self.file = file
        self.bytes = bytes
        func fail(_ subject: String, _ problem: String) -> ModelFileError {
            ModelFileError(kind: subject.isEmpty ? .header : .tensor, file: file, subject: subject, problem: problem)
        }
        guard bytes.count >= 8 else {
            throw fail("", "file of \(bytes.count) bytes is shorter than the 8-byte header length")
        }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        guard n <= UInt64(Self.maxHeaderBytes) else {
            throw fail("", "header length \(n) exceeds \(Self.maxHeaderBytes) bytes")
        }
        guard 8 + Int(n) <= bytes.count else {
            throw fail("", "header length \(n) runs past the end of the \(bytes.count)-byte file (truncated?)")
        }
        let headerLength = Int(n)
        dataStart = 8 + headerLength
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: Data(bytes[8..<dataStart]))
        } catch {
            throw fail("", "header is not valid JSON")
        }
        guard let object = json as? [String: Any] else { throw fail("", "header is not a JSON object") }
        var metadata: [String: String] = [:]
        var tensors: [String: SafetensorsTensor] = [:]
        let dataLength = bytes.count - dataStart
        for (name, value) in object {
            if name == "__metadata__" {
                guard let m = value as? [String: Any] else { throw fail("__metadata__", "must be a map of strings") }
                for (k, v) in m {
                    guard let s = v as? String else { throw fail("__metadata__.\(k)", "must be a string") }
                    metadata[k] = s
                }
                continue
            }
            guard let entry = value as? [String: Any] else { throw fail(name, "entry is not an object") }
            guard let ds = entry["dtype"] as? String, let dtype = DType(rawValue: ds) else {
                throw fail(name, "unknown dtype \(entry["dtype"].map { "\($0)" } ?? "(missing)")")
            }
            guard let shapeAny = entry["shape"] as? [Any], shapeAny.count <= 8 else {
                throw fail(name, "shape must be a list of at most 8 integers")
            }
            var shape: [Int] = []
            var elements = 1
            for d in shapeAny {
                guard let v = (d as? NSNumber)?.int64Value, v >= 0, (d as? NSNumber)?.doubleValue == Double(v) else {
                    throw fail(name, "shape \(shapeAny) has a dimension that is not a non-negative integer")
                }
                let (p, o) = elements.multipliedReportingOverflow(by: Int(v))
                guard !o, p <= Self.maxElements else {
                    throw fail(name, "shape \(shapeAny) has too many elements (limit \(Self.maxElements))")
                }
                elements = p
                shape.append(Int(v))
            }
            guard let offs = entry["data_offsets"] as? [Any], offs.count == 2,
                let b = (offs[0] as? NSNumber)?.int64Value, let e = (offs[1] as? NSNumber)?.int64Value
            else {
                throw fail(name, "data_offsets must be two integers")
            }
            guard b >= 0, e >= b, e <= Int64(dataLength) else {
                throw fail(name, "data_offsets [\(b), \(e)] outside the \(dataLength)-byte data section")
            }
            guard Int(e - b) == elements * dtype.size else {
                throw fail(
                    name,
                    "\(dtype.rawValue) shape \(shape) needs \(elements * dtype.size) bytes, data_offsets give \(e - b)")
            }
            tensors[name] = SafetensorsTensor(
                name: name, dtype: dtype, shape: shape, range: (dataStart + Int(b))..<(dataStart + Int(e)))
        }
        var end = dataStart
        for t in tensors.values.sorted(by: {
            ($0.range.lowerBound, $0.range.upperBound) < ($1.range.lowerBound, $1.range.upperBound)
        }) {
            if t.range.lowerBound < end { throw fail(t.name, "data range overlaps another tensor's") }
            if t.range.lowerBound > end {
                throw fail(t.name, "hole of \(t.range.lowerBound - end) bytes before this tensor's data")
            }
            end = t.range.upperBound
        }
        guard end == bytes.count else {
            throw fail("", "\(bytes.count - end) bytes after the last tensor belong to none")
        }
        self.metadata = metadata
        self.tensors = tensors
    }

    /// A tensor's elements, checked for dtype and (if given) shape.
    public func array<T: BitwiseCopyable>(_ name: String, as dtype: DType, _: T.Type = T.self, shape: [Int]? = nil)
        throws(ModelFileError) -> [T]
    {
        guard let t = tensors[name] else {
            throw ModelFileError(kind: .tensor, file: file, subject: name, problem: "missing")
        }
        guard t.dtype == dtype, MemoryLayout<T>.size == dtype.size else {
            throw ModelFileError(
                kind: .tensor, file: file, subject: name,
                problem: "dtype \(t.dtype.rawValue), expected \(dtype.rawValue)")
        }
        if let shape, shape != t.shape {
            throw ModelFileError(
                kind: .tensor, file: file, subject: name, problem: "shape \(t.shape), expected \(shape)")
        }
        return bytes.withUnsafeBytes { b in
            [T](unsafeUninitializedCapacity: t.elementCount) { out, count in
                UnsafeMutableRawBufferPointer(out).copyMemory(from: UnsafeRawBufferPointer(rebasing: b[t.range]))
                count = t.elementCount
            }
        }
    }

    public func floats(_ name: String, shape: [Int]? = nil) throws(ModelFileError) -> [Float] {
        try array(name, as: .f32, Float.self, shape: shape)
    }
}

/// Writes safetensors files (tensors in the order given, metadata as strings).
public struct SafetensorsWriter {
    private var entries: [(String, DType, [Int], [UInt8])] = []
    public var metadata: [String: String] = [:]
    public init() {}

    public mutating func add<T: BitwiseCopyable>(_ name: String, _ dtype: DType, shape: [Int], _ values: [T]) {
        precondition(MemoryLayout<T>.size == dtype.size && shape.reduce(1, *) == values.count)
        entries.append((name, dtype, shape, values.withUnsafeBytes { Array($0) }))
    }

    /// Adds a tensor from its raw little-endian bytes (`bytes.count` = elements × dtype size).
    public mutating func add(_ name: String, _ dtype: DType, shape: [Int], bytes: [UInt8]) {
        precondition(shape.reduce(1, *) * dtype.size == bytes.count)
        entries.append((name, dtype, shape, bytes))
    }

    public func serialized() -> [UInt8] {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for (name, dtype, shape, data) in entries {
            header[name] =
                ["dtype": dtype.rawValue, "shape": shape, "data_offsets": [offset, offset + data.count]]
                as [String: Any]
            offset += data.count
        }
        var json = [UInt8]((try? JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])) ?? Data())
        while (json.count + 8) % 8 != 0 { json.append(0x20) }  // pad to 8 bytes, as the reference writer does
        var out = [UInt8]()
        out.reserveCapacity(8 + json.count + offset)
        var n = UInt64(json.count)
        for _ in 0..<8 {
            out.append(UInt8(n & 0xFF))
            n >>= 8
        }
        out += json
        for e in entries { out += e.3 }
        return out
    }

    public func write(to path: String) throws {
        try Data(serialized()).write(to: URL(fileURLWithPath: path))
    }
}
