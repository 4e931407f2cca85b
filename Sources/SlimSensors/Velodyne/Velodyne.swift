import Foundation

/// Velodyne VLP-16 and VLP-32C data packets, as the manuals give them: the 1206-byte UDP payload
/// (port 2368) of 12 blocks, each `0xFFEE`, an azimuth (u16 LE, hundredths of a degree, 0…35999)
/// and 32 channel records (distance u16 LE in 2 mm units, 0: no return; reflectivity u8), then a
/// timestamp (u32 LE, µs past the hour), the return mode (0x37 strongest, 0x38 last, 0x39 dual)
/// and the product id (0x22 VLP-16, 0x28 VLP-32C).
///
/// A VLP-16 block holds two firings of its 16 lasers (the second at the azimuth halfway to the
/// next block's); a VLP-32C block one firing of 32. Points come out in the sensor frame of the
/// recordings (x forward, y left, z up; w = reflectivity / 255): azimuth α clockwise from
/// forward, elevation ω from the laser's table, x = d cos ω cos α, y = −d cos ω sin α, z = d sin ω.
/// Not applied: per-laser timing within a firing, the VLP-32C's per-laser azimuth offsets and the
/// VLP-16's vertical offsets (millimetres), calibration files.
public enum VelodyneModel: String, CaseIterable, Sendable {
    case vlp16 = "VLP-16"
    case vlp32c = "VLP-32C"

    public var productID: UInt8 { self == .vlp16 ? 0x22 : 0x28 }
    /// Lasers fired at once (one firing sequence).
    public var lasers: Int { self == .vlp16 ? 16 : 32 }
    /// Firings per block.
    public var firingsPerBlock: Int { self == .vlp16 ? 2 : 1 }

    /// Elevation of each laser id, degrees (VLP-16 and VLP-32C manuals).
    public var elevationsDeg: [Double] {
        switch self {
        case .vlp16: [-15, 1, -13, 3, -11, 5, -9, 7, -7, 9, -5, 11, -3, 13, -1, 15]
        case .vlp32c:
            [
                -25, -1, -1.667, -15.639, -11.31, 0, -0.667, -8.843, -7.254, 0.333, -0.333, -6.148, -5.333, 1.333,
                0.667, -4, -4.667, 1.667, 1, -3.667, -3.333, 3.333, 2.333, -2.667, -3, 7, 4.667, -2.333, -2, 15,
                10.333, -1.333,
            ]
        }
    }

    public static func named(_ s: String) -> VelodyneModel? {
        allCases.first { $0.rawValue.caseInsensitiveCompare(s) == .orderedSame }
    }
}

public enum Velodyne {
    public static let packetSize = 1206
    public static let blocks = 12
    public static let blockSize = 100
    /// Metres per distance unit.
    public static let distanceUnit = 0.002
    /// The farthest return a packet can carry (65535 units).
    public static let maxRange = 65535 * distanceUnit
}

/// Why a packet was refused (nothing of it is used).
public enum VelodynePacketError: Error, Equatable, CustomStringConvertible, Sendable {
    case wrongSize(Int)
    case badBlockFlag(block: Int, flag: UInt16)
    case badAzimuth(block: Int, value: UInt16)
    case wrongProduct(UInt8)
    case unsupportedReturnMode(UInt8)

    /// The counter a refusal goes to.
    public var reason: String {
        switch self {
        case .wrongSize: "wrong_size"
        case .badBlockFlag: "bad_block_flag"
        case .badAzimuth: "bad_azimuth"
        case .wrongProduct: "wrong_product"
        case .unsupportedReturnMode: "unsupported_return_mode"
        }
    }

    public var description: String {
        switch self {
        case .wrongSize(let n): "a Velodyne data packet is \(Velodyne.packetSize) bytes, not \(n)"
        case .badBlockFlag(let b, let f): "block \(b): flag 0x\(String(f, radix: 16)), not 0xffee"
        case .badAzimuth(let b, let v): "block \(b): azimuth \(v) is over 35999"
        case .wrongProduct(let p): "product id 0x\(String(p, radix: 16)) is not the configured model's"
        case .unsupportedReturnMode(let m): "return mode 0x\(String(m, radix: 16)): only strongest (0x37) and last (0x38)"
        }
    }
}

/// Turns a packet stream into sweeps: validates each packet whole, decodes its firings, and
/// closes a sweep when the azimuth wraps past 0. Counts what it refuses or notices
/// (`counters`): refused packets by reason, `reordered` packets (azimuth going back by less
/// than half a turn: dropped), `gaps` (a jump of more than three firing steps: packets lost).
public struct VelodyneSweeps: Sendable {
    public let model: VelodyneModel
    public private(set) var counters: [String: Int] = [:]
    public private(set) var packets = 0
    public private(set) var sweeps = 0
    private var current: [SIMD4<Float>] = []
    private var last: Int?
    private var step: Int?
    private let cosEl: [Float], sinEl: [Float]

    public init(model: VelodyneModel) {
        self.model = model
        cosEl = model.elevationsDeg.map { Float(cos($0 * .pi / 180)) }
        sinEl = model.elevationsDeg.map { Float(sin($0 * .pi / 180)) }
    }

    /// Checks a whole packet before any of it is used.
    public func validate(_ p: UnsafeRawBufferPointer) throws(VelodynePacketError) {
        guard p.count == Velodyne.packetSize else { throw .wrongSize(p.count) }
        for b in 0..<Velodyne.blocks {
            let o = b * Velodyne.blockSize
            let flag = UInt16(p[o]) << 8 | UInt16(p[o + 1])
            guard flag == 0xFFEE else { throw .badBlockFlag(block: b, flag: flag) }
            let az = Self.azimuth(p, block: b)
            guard az < 36000 else { throw .badAzimuth(block: b, value: UInt16(az)) }
        }
        let mode = p[1204]
        guard mode == 0x37 || mode == 0x38 else { throw .unsupportedReturnMode(mode) }
        guard p[1205] == model.productID else { throw .wrongProduct(p[1205]) }
    }

    /// Block `b`'s azimuth, hundredths of a degree (read from the packet: nothing allocated per packet).
    static func azimuth(_ p: UnsafeRawBufferPointer, block b: Int) -> Int {
        let o = b * Velodyne.blockSize
        return Int(p[o + 2]) | Int(p[o + 3]) << 8
    }

    /// Adds one packet; returns the sweep it completed, if the azimuth wrapped in it.
    public mutating func add(_ p: UnsafeRawBufferPointer) -> [SIMD4<Float>]? {
        packets += 1
        do { try validate(p) } catch {
            counters[error.reason, default: 0] += 1
            return nil
        }
        let first = Self.azimuth(p, block: 0)
        if let last, first < last, last - first < 18000 {
            counters["reordered", default: 0] += 1
            return nil
        }
        var done: [SIMD4<Float>]?
        let firings = model.firingsPerBlock
        for b in 0..<Velodyne.blocks {
            let az = Self.azimuth(p, block: b)
            // The next block's azimuth sets the second firing's (the last block continues its step).
            let next =
                b + 1 < Velodyne.blocks
                ? Self.azimuth(p, block: b + 1)
                : az + (b > 0 ? (az - Self.azimuth(p, block: b - 1) + 36000) % 36000 : 0)
            let span = (next - az + 36000) % 36000
            for f in 0..<firings {
                let fa = (az + (firings == 2 && f == 1 ? span / 2 : 0)) % 36000
                if let l = last {
                    if fa < l, l - fa >= 18000 {
                        // Wrapped: a sweep is complete.
                        if !current.isEmpty {
                            done = current
                            sweeps += 1
                        }
                        current.removeAll(keepingCapacity: true)
                    } else if fa > l, let s = step, s > 0, fa - l > 3 * s + 2 {
                        counters["gaps", default: 0] += 1
                    }
                    if fa != l { step = fa > l ? fa - l : step }
                }
                last = fa
                let alpha = Float(fa) * .pi / 18000
                let ca = cos(alpha), sa = sin(alpha)
                let base = b * Velodyne.blockSize + 4 + f * model.lasers * 3
                for laser in 0..<model.lasers {
                    let o = base + laser * 3
                    let units = UInt16(p[o]) | UInt16(p[o + 1]) << 8
                    guard units != 0 else { continue }
                    let d = Float(units) * Float(Velodyne.distanceUnit)
                    let xy = d * cosEl[laser]
                    current.append(SIMD4(xy * ca, -xy * sa, d * sinEl[laser], Float(p[o + 2]) / 255))
                }
            }
        }
        return done
    }

    /// The sweep under way (after a stream ends, or when packets stop).
    public mutating func flush() -> [SIMD4<Float>]? {
        guard !current.isEmpty else { return nil }
        defer {
            current.removeAll(keepingCapacity: true)
            last = nil
        }
        sweeps += 1
        return current
    }
}

/// Writes sweeps as the packets a sensor of `model` would send (for `slimsplit replay --as
/// velodyne`): each point goes to the laser whose elevation is nearest its own, at its azimuth
/// (0.01°) and distance (2 mm). Points at the same azimuth share a firing; two on one laser go to
/// another firing at that azimuth, so that every point within range is sent. One firing per
/// block (the VLP-16's second firing of a block stays empty). Points beyond `Velodyne.maxRange`
/// or closer than 1 cm cannot be carried and are counted.
public struct VelodyneEncoder: Sendable {
    public let model: VelodyneModel
    public init(model: VelodyneModel) { self.model = model }

    public struct Sweep: Sendable {
        public var packets: [[UInt8]]
        /// Points carried, and points the format cannot carry.
        public var carried: Int
        public var outOfRange: Int
    }

    public func encode(_ points: [SIMD4<Float>], timestampUs: UInt32) -> Sweep {
        let elevations = model.elevationsDeg
        var columns: [(az: Int, laser: Int, units: UInt16, refl: UInt8)] = []
        columns.reserveCapacity(points.count)
        var outOfRange = 0
        for p in points {
            let x = Double(p.x), y = Double(p.y), z = Double(p.z)
            let d = (x * x + y * y + z * z).squareRoot()
            guard d >= 0.01, d <= Velodyne.maxRange else {
                outOfRange += 1
                continue
            }
            var az = Int((atan2(-y, x) * 18000 / .pi).rounded())
            if az < 0 { az += 36000 }
            az %= 36000
            let el = atan2(z, (x * x + y * y).squareRoot()) * 180 / .pi
            var laser = 0
            for (i, e) in elevations.enumerated() where abs(e - el) < abs(elevations[laser] - el) { laser = i }
            columns.append((az, laser, UInt16(min(65535, (d / Velodyne.distanceUnit).rounded())), UInt8(max(0, min(255, p.w * 255)))))
        }
        columns.sort { ($0.az, $0.laser) < ($1.az, $1.laser) }
        // Firings: one azimuth each, one return per laser.
        var firings: [(az: Int, returns: [(laser: Int, units: UInt16, refl: UInt8)])] = []
        var i = 0
        while i < columns.count {
            let az = columns[i].az
            var j = i
            while j < columns.count, columns[j].az == az { j += 1 }
            var pending = Array(columns[i..<j])
            while !pending.isEmpty {
                var used = Set<Int>()
                var firing: [(Int, UInt16, UInt8)] = []
                var rest: [(az: Int, laser: Int, units: UInt16, refl: UInt8)] = []
                for c in pending {
                    if used.insert(c.laser).inserted { firing.append((c.laser, c.units, c.refl)) } else { rest.append(c) }
                }
                firings.append((az, firing))
                pending = rest
            }
            i = j
        }
        var packets: [[UInt8]] = []
        var packet = [UInt8](repeating: 0, count: Velodyne.packetSize)
        var block = 0
        func finish() {
            // Empty blocks (no returns) repeat the last azimuth.
            let lastAz = block > 0 ? Int(packet[(block - 1) * 100 + 2]) | Int(packet[(block - 1) * 100 + 3]) << 8 : 0
            while block < Velodyne.blocks {
                let o = block * Velodyne.blockSize
                packet[o] = 0xFF
                packet[o + 1] = 0xEE
                packet[o + 2] = UInt8(lastAz & 0xFF)
                packet[o + 3] = UInt8(lastAz >> 8)
                block += 1
            }
            let t = timestampUs &+ UInt32(packets.count) * 1000
            packet[1200] = UInt8(t & 0xFF)
            packet[1201] = UInt8((t >> 8) & 0xFF)
            packet[1202] = UInt8((t >> 16) & 0xFF)
            packet[1203] = UInt8(t >> 24)
            packet[1204] = 0x37
            packet[1205] = model.productID
            packets.append(packet)
            packet = [UInt8](repeating: 0, count: Velodyne.packetSize)
            block = 0
        }
        for f in firings {
            let o = block * Velodyne.blockSize
            packet[o] = 0xFF
            packet[o + 1] = 0xEE
            packet[o + 2] = UInt8(f.az & 0xFF)
            packet[o + 3] = UInt8(f.az >> 8)
            for r in f.returns {
                let c = o + 4 + r.laser * 3
                packet[c] = UInt8(r.units & 0xFF)
                packet[c + 1] = UInt8(r.units >> 8)
                packet[c + 2] = r.refl
            }
            block += 1
            if block == Velodyne.blocks { finish() }
        }
        if block > 0 { finish() }
        return Sweep(packets: packets, carried: columns.count, outOfRange: outOfRange)
    }
}
