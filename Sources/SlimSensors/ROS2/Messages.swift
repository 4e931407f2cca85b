import Foundation
import SlimCore

/// builtin_interfaces/Time.
public struct RosTime: Sendable, Equatable {
    public var sec: Int32
    public var nanosec: UInt32
    public init(sec: Int32, nanosec: UInt32) {
        self.sec = sec
        self.nanosec = nanosec
    }
    public init(ns: UInt64) {
        sec = Int32(truncatingIfNeeded: ns / 1_000_000_000)
        nanosec = UInt32(ns % 1_000_000_000)
    }
    public var ns: UInt64 { UInt64(max(0, Int64(sec))) * 1_000_000_000 + UInt64(nanosec) }
}

/// std_msgs/Header.
public struct RosHeader: Sendable, Equatable {
    public var stamp: RosTime
    public var frameID: String
    public init(stamp: RosTime, frameID: String) {
        self.stamp = stamp
        self.frameID = frameID
    }

    func write(_ w: inout CDRWriter) {
        w.put(stamp.sec)
        w.put(stamp.nanosec)
        w.string(frameID)
    }

    static func read(_ r: inout CDRReader) throws(CDRError) -> RosHeader {
        let sec = try r.get(Int32.self)
        let ns = try r.get(UInt32.self)
        return RosHeader(stamp: RosTime(sec: sec, nanosec: ns), frameID: try r.string())
    }
}

/// geometry_msgs/Pose: position and unit quaternion (x, y, z, w).
public struct Pose3: Sendable, Equatable {
    public var position: SIMD3<Double>
    public var orientation: SIMD4<Double>
    public init(position: SIMD3<Double>, orientation: SIMD4<Double>) {
        self.position = position
        self.orientation = orientation
    }
    /// A pose in the ground plane: position and heading (yaw about +z).
    public init(x: Double, y: Double, z: Double = 0, yaw: Double) {
        position = SIMD3(x, y, z)
        orientation = SIMD4(0, 0, sin(yaw / 2), cos(yaw / 2))
    }
    /// Heading about +z.
    public var yaw: Double { Pose2D.yaw(ofQuaternion: orientation) }

    func write(_ w: inout CDRWriter) {
        w.f64(position.x)
        w.f64(position.y)
        w.f64(position.z)
        w.f64(orientation.x)
        w.f64(orientation.y)
        w.f64(orientation.z)
        w.f64(orientation.w)
    }

    static func read(_ r: inout CDRReader) throws(CDRError) -> Pose3 {
        let p = SIMD3(try r.f64(), try r.f64(), try r.f64())
        return Pose3(position: p, orientation: SIMD4(try r.f64(), try r.f64(), try r.f64(), try r.f64()))
    }
}

/// geometry_msgs/msg/PoseStamped.
public struct PoseStamped: Sendable, Equatable {
    public static let typeName = "geometry_msgs/msg/PoseStamped"
    public var header: RosHeader
    public var pose: Pose3
    public init(header: RosHeader, pose: Pose3) {
        self.header = header
        self.pose = pose
    }

    public func encoded() -> [UInt8] {
        var w = CDRWriter()
        header.write(&w)
        pose.write(&w)
        return w.bytes
    }

    public static func decode(_ data: UnsafeRawBufferPointer) throws(CDRError) -> PoseStamped {
        var r = try CDRReader(data, type: typeName)
        return PoseStamped(header: try RosHeader.read(&r), pose: try Pose3.read(&r))
    }
}

/// sensor_msgs/msg/PointCloud2, reduced to what a LiDAR pipeline needs: finite points with
/// x, y, z and intensity.
public enum PointCloud2 {
    public static let typeName = "sensor_msgs/msg/PointCloud2"

    /// Encodes points (x, y, z, intensity) as float32 fields x, y, z, intensity, point_step 16,
    /// one row, dense.
    public static func encode(header: RosHeader, points: [SIMD4<Float>]) -> [UInt8] {
        var w = CDRWriter()
        header.write(&w)
        w.put(UInt32(1))
        w.put(UInt32(points.count))
        w.put(UInt32(4))
        for (i, name) in ["x", "y", "z", "intensity"].enumerated() {
            w.string(name)
            w.put(UInt32(4 * i))
            w.put(UInt8(7))
            w.put(UInt32(1))
        }
        w.bool(false)
        w.put(UInt32(16))
        w.put(UInt32(16 * points.count))
        w.put(UInt32(16 * points.count))
        points.withUnsafeBytes { raw in
            if let b = raw.baseAddress { w.appendRaw(UnsafeRawBufferPointer(start: b, count: raw.count)) }
        }
        w.bool(true)
        return w.bytes
    }

    /// Decodes any valid layout into `points` (cleared first; its capacity is reused): fields in
    /// any order and offset, `point_step` and `row_step` padding, float32 or float64 coordinates
    /// (or any numeric type), intensity of any numeric type or missing (then 0), either
    /// endianness, 2-D clouds. Points with a coordinate that is not a finite Float are dropped (a
    /// non-finite or out-of-range intensity reads as 0).
    /// - Returns: the header.
    @discardableResult
    public static func decode(_ data: UnsafeRawBufferPointer, into points: inout [SIMD4<Float>]) throws(CDRError)
        -> RosHeader
    {
        var r = try CDRReader(data, type: typeName)
        let header = try RosHeader.read(&r)
        let height = Int(try r.get(UInt32.self))
        let width = Int(try r.get(UInt32.self))
        let nFields = try r.count(minElementSize: 13)
        var fields: [String: (offset: Int, type: UInt8)] = [:]
        for _ in 0..<nFields {
            let name = try r.string()
            let offset = Int(try r.get(UInt32.self))
            let type = try r.get(UInt8.self)
            _ = try r.get(UInt32.self)
            fields[name] = (offset, type)
        }
        let bigEndian = try r.bool()
        let pointStep = Int(try r.get(UInt32.self))
        let rowStep = Int(try r.get(UInt32.self))
        let n = try r.count(minElementSize: 1)
        let bytes = try r.bytes(n)
        points.removeAll(keepingCapacity: true)
        guard let fx = fields["x"], let fy = fields["y"], let fz = fields["z"] else {
            throw r.fail("PointCloud2 without x, y and z fields (has \(fields.keys.sorted()))")
        }
        let fi = fields["intensity"]
        for f in [fx, fy, fz] + (fi.map { [$0] } ?? []) {
            guard let size = fieldSize(f.type) else {
                throw r.fail("field datatype \(f.type) is not a PointField type")
            }
            guard f.offset + size <= pointStep else {
                throw r.fail("field at offset \(f.offset) does not fit point_step \(pointStep)")
            }
        }
        // Every product checked for overflow: the four sizes are arbitrary UInt32s.
        let (rowBytes, o1) = width.multipliedReportingOverflow(by: pointStep)
        let (lastRowStart, o2) = rowStep.multipliedReportingOverflow(by: max(height - 1, 0))
        let (needed, o3) = lastRowStart.addingReportingOverflow(rowBytes)
        guard height == 0 || width == 0 || (pointStep > 0 && !o1 && !o2 && !o3 && rowStep >= rowBytes && needed <= n)
        else {
            throw r.fail(
                "data of \(n) bytes cannot hold \(height)×\(width) points of \(pointStep) bytes with row_step \(rowStep)"
            )
        }
        guard height > 0, width > 0 else { return header }  // an empty cloud (a 4e9 × 0 one took 20 s)
        points.reserveCapacity(height * width)
        for row in 0..<height {
            for col in 0..<width {
                let base = row * rowStep + col * pointStep
                // Converted first, then checked: a float64 beyond Float's range is not finite either.
                let x = Float(read(bytes, base + fx.offset, fx.type, bigEndian))
                let y = Float(read(bytes, base + fy.offset, fy.type, bigEndian))
                let z = Float(read(bytes, base + fz.offset, fz.type, bigEndian))
                guard x.isFinite, y.isFinite, z.isFinite else { continue }
                let i = fi.map { Float(read(bytes, base + $0.offset, $0.type, bigEndian)) } ?? 0
                points.append(SIMD4(x, y, z, i.isFinite ? i : 0))
            }
        }
        return header
    }

    static func fieldSize(_ t: UInt8) -> Int? {
        switch t {
        case 1, 2: 1
        case 3, 4: 2
        case 5, 6, 7: 4
        case 8: 8
        default: nil
        }
    }

    @inline(__always)
    static func read(_ b: UnsafeRawBufferPointer, _ o: Int, _ t: UInt8, _ big: Bool) -> Double {
        @inline(__always) func load<T: FixedWidthInteger>(_: T.Type) -> T {
            let v = b.loadUnaligned(fromByteOffset: o, as: T.self)
            return big ? T(bigEndian: v) : T(littleEndian: v)
        }
        switch t {
        case 1: return Double(Int8(bitPattern: b[o]))
        case 2: return Double(b[o])
        case 3: return Double(load(Int16.self))
        case 4: return Double(load(UInt16.self))
        case 5: return Double(load(Int32.self))
        case 6: return Double(load(UInt32.self))
        case 7: return Double(Float(bitPattern: load(UInt32.self)))
        default: return Double(bitPattern: load(UInt64.self))
        }
    }
}

extension CDRWriter {
    mutating func appendRaw(_ b: UnsafeRawBufferPointer) { withBytes { $0 += b } }
}

/// One vision_msgs/Detection3D, reduced to a class hypothesis and a box.
public struct Detection3D: Sendable, Equatable {
    public var classID: String
    public var score: Double
    public var center: Pose3
    /// Length (along heading), width, height.
    public var size: SIMD3<Double>
    public var id: String
    public init(classID: String, score: Double, center: Pose3, size: SIMD3<Double>, id: String) {
        self.classID = classID
        self.score = score
        self.center = center
        self.size = size
        self.id = id
    }
}

/// vision_msgs/msg/Detection3DArray (Humble layout).
public struct Detection3DArray: Sendable, Equatable {
    public static let typeName = "vision_msgs/msg/Detection3DArray"
    public var header: RosHeader
    public var detections: [Detection3D]
    public init(header: RosHeader, detections: [Detection3D]) {
        self.header = header
        self.detections = detections
    }

    public func encoded() -> [UInt8] {
        var w = CDRWriter()
        header.write(&w)
        w.put(UInt32(detections.count))
        for d in detections {
            header.write(&w)
            w.put(UInt32(1))  // one hypothesis
            w.string(d.classID)
            w.f64(d.score)
            d.center.write(&w)
            for _ in 0..<36 { w.f64(0) }
            d.center.write(&w)
            w.f64(d.size.x)
            w.f64(d.size.y)
            w.f64(d.size.z)
            w.string(d.id)
        }
        return w.bytes
    }

    public static func decode(_ data: UnsafeRawBufferPointer) throws(CDRError) -> Detection3DArray {
        var r = try CDRReader(data, type: typeName)
        let header = try RosHeader.read(&r)
        let n = try r.count(minElementSize: 100)
        var out: [Detection3D] = []
        for _ in 0..<n {
            _ = try RosHeader.read(&r)
            let nr = try r.count(minElementSize: 16)
            var classID = ""
            var score = 0.0
            for k in 0..<nr {
                let c = try r.string()
                let s = try r.f64()
                _ = try Pose3.read(&r)
                for _ in 0..<36 { _ = try r.f64() }
                if k == 0 || s > score {
                    classID = c
                    score = s
                }
            }
            let center = try Pose3.read(&r)
            let size = SIMD3(try r.f64(), try r.f64(), try r.f64())
            out.append(Detection3D(classID: classID, score: score, center: center, size: size, id: try r.string()))
        }
        return Detection3DArray(header: header, detections: out)
    }
}
