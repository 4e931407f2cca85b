import Foundation

/// A pose in the bird's-eye-view plane: a position (metres) and a heading (radians,
/// counter-clockwise from +x), both in one common frame (the world, or another agent's frame).
///
/// The one 2-D transform of SlimSplit: ground truth into an agent's frame, boxes between agents'
/// frames (late fusion), the warp between grids, cell coverage. `Float` on the server's and the
/// perception path, `Double` where sensor poses are read.
public struct Pose2D<Scalar: PlaneScalar>: Sendable, Equatable {
    public var position: SIMD2<Scalar>
    public var yaw: Scalar

    public init(_ position: SIMD2<Scalar>, yaw: Scalar) {
        self.position = position
        self.yaw = yaw
    }

    public init(x: Scalar, y: Scalar, yaw: Scalar) { self.init(SIMD2(x, y), yaw: yaw) }

    /// A point given in this pose's frame, in the common frame.
    public func toCommon(_ p: SIMD2<Scalar>) -> SIMD2<Scalar> {
        let c = Scalar.cos(yaw)
        let s = Scalar.sin(yaw)
        return SIMD2(position.x + c * p.x - s * p.y, position.y + s * p.x + c * p.y)
    }

    /// A point given in the common frame, in this pose's frame.
    public func toLocal(_ p: SIMD2<Scalar>) -> SIMD2<Scalar> {
        let c = Scalar.cos(-yaw)
        let s = Scalar.sin(-yaw)
        let dx = p.x - position.x
        let dy = p.y - position.y
        return SIMD2(c * dx - s * dy, s * dx + c * dy)
    }

    /// A heading given in the common frame, in this pose's frame, in (−π, π].
    public func toLocal(heading: Scalar) -> Scalar { Self.wrap(heading - yaw) }

    /// The heading of a unit quaternion (x, y, z, w) about +z.
    public static func yaw(ofQuaternion q: SIMD4<Scalar>) -> Scalar {
        Scalar.atan2(2 * (q.w * q.z + q.x * q.y), 1 - 2 * (q.y * q.y + q.z * q.z))
    }

    /// An angle in (−π, π].
    public static func wrap(_ a: Scalar) -> Scalar { Scalar.atan2(Scalar.sin(a), Scalar.cos(a)) }
}

/// The scalars a `Pose2D` computes in: `Float` and `Double`.
public protocol PlaneScalar: BinaryFloatingPoint, SIMDScalar, Codable, Sendable where SIMD2Storage: Sendable {
    static func cos(_ x: Self) -> Self
    static func sin(_ x: Self) -> Self
    static func atan2(_ y: Self, _ x: Self) -> Self
}

extension Float: PlaneScalar {
    public static func cos(_ x: Float) -> Float { Foundation.cos(x) }
    public static func sin(_ x: Float) -> Float { Foundation.sin(x) }
    public static func atan2(_ y: Float, _ x: Float) -> Float { Foundation.atan2(y, x) }
}

extension Double: PlaneScalar {
    public static func cos(_ x: Double) -> Double { Foundation.cos(x) }
    public static func sin(_ x: Double) -> Double { Foundation.sin(x) }
    public static func atan2(_ y: Double, _ x: Double) -> Double { Foundation.atan2(y, x) }
}
