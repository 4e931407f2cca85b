import SlimConfig
import SlimWire

/// One region of the fleet: a rectangle of the world frame (metres) served by one server.
public struct Region: Sendable, Equatable, Codable {
    /// An identifier (`[A-Za-z0-9._-]`, 1–64 bytes): it travels in Handover messages.
    public var name: String
    public var minX: Double
    public var maxX: Double
    public var minY: Double
    public var maxY: Double
    /// The region whose server takes this one over when this one's server is gone (nil: none).
    public var standby: String?

    public init(name: String, minX: Double, maxX: Double, minY: Double, maxY: Double, standby: String? = nil) {
        self.name = name
        self.minX = minX
        self.maxX = maxX
        self.minY = minY
        self.maxY = maxY
        self.standby = standby
    }

    /// True when (x, y) lies inside the rectangle grown by `margin` on every side (edges included).
    public func contains(x: Double, y: Double, margin: Double = 0) -> Bool {
        x >= minX - margin && x <= maxX + margin && y >= minY - margin && y <= maxY + margin
    }

    /// Distance from (x, y) to the rectangle (0 inside).
    public func distance(x: Double, y: Double) -> Double {
        let dx = max(minX - x, 0, x - maxX)
        let dy = max(minY - y, 0, y - maxY)
        return (dx * dx + dy * dy).squareRoot()
    }
}

/// The fleet's region map, shared by every server (a file, a ConfigMap, or the registry).
///
/// Regions' cores do not overlap (they may share edges); the overlap between neighbours is the
/// margin around each core. An agent's *home* is the region whose core holds its position; it
/// sends to every region whose core plus margin holds it.
public struct RegionMap: Sendable, Equatable, Codable {
    public var regions: [Region]
    /// Width of the overlap band on each side of a boundary, metres.
    public var margin: Double

    public init(regions: [Region], margin: Double) throws(ConfigError) {
        self.regions = regions.sorted { $0.name < $1.name }
        self.margin = margin
        try validate(file: "region map")
    }

    public func region(named name: String) -> Region? { regions.first { $0.name == name } }

    /// The region whose core holds (x, y); on a shared edge, the first by name.
    public func home(x: Double, y: Double) -> Region? { regions.first { $0.contains(x: x, y: y) } }

    /// Regions other than `home` whose core plus margin holds (x, y), nearest first.
    public func overlapping(x: Double, y: Double, except home: String?) -> [Region] {
        regions.filter { $0.name != home && $0.contains(x: x, y: y, margin: margin) }
            .sorted { $0.distance(x: x, y: y) < $1.distance(x: x, y: y) }
    }

    /// Reads a region map file (YAML):
    ///
    /// ```yaml
    /// margin_m: 20
    /// regions:
    ///   west: {x_min: -500, x_max: 0, y_min: -200, y_max: 200, standby: east}
    ///   east: {x_min: 0, x_max: 500, y_min: -200, y_max: 200, standby: west}
    /// ```
    public static func load(file: String) throws(ConfigError) -> RegionMap {
        let root = try ConfigSection.load(file: file)
        let margin = try root.double("margin_m", default: 20, in: 0...10_000)
        let rs = try root.section("regions")
        var regions: [Region] = []
        for name in rs.keys {
            let r = try rs.section(name)
            regions.append(
                Region(
                    name: name, minX: try r.double("x_min", in: -1e7...1e7),
                    maxX: try r.double("x_max", in: -1e7...1e7),
                    minY: try r.double("y_min", in: -1e7...1e7), maxY: try r.double("y_max", in: -1e7...1e7),
                    standby: try r.optionalString("standby")))
        }
        try root.finish()
        let map = RegionMap(unchecked: regions, margin: margin)
        try map.validate(file: file)
        return map
    }

    private init(unchecked regions: [Region], margin: Double) {
        self.regions = regions.sorted { $0.name < $1.name }
        self.margin = margin
    }

    /// Names are identifiers, rectangles are not empty, cores do not overlap, standbys exist.
    public func validate(file: String) throws(ConfigError) {
        guard !regions.isEmpty else { throw ConfigError(file: file, key: "regions", problem: "no regions") }
        guard margin.isFinite, margin >= 0 else {
            throw ConfigError(file: file, key: "margin_m", problem: "\(margin) must be finite and >= 0")
        }
        for r in regions {
            let key = "regions.\(r.name)"
            guard Identifier.isValid(r.name) else {
                throw ConfigError(file: file, key: key, problem: "a region name must be 1-64 bytes of [A-Za-z0-9._-]")
            }
            guard r.minX < r.maxX, r.minY < r.maxY, [r.minX, r.maxX, r.minY, r.maxY].allSatisfy(\.isFinite) else {
                throw ConfigError(file: file, key: key, problem: "x_min < x_max and y_min < y_max are required")
            }
            if let s = r.standby {
                guard s != r.name, region(named: s) != nil else {
                    throw ConfigError(
                        file: file, key: key + ".standby", problem: "'\(s)' is not another region of this map")
                }
            }
            for o in regions where o.name > r.name {
                if min(r.maxX, o.maxX) > max(r.minX, o.minX), min(r.maxY, o.maxY) > max(r.minY, o.minY) {
                    throw ConfigError(
                        file: file, key: key, problem: "overlaps region \(o.name); cores may share edges only")
                }
            }
        }
    }
}
