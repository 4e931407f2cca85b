import SlimConfig

/// A scene for the simulator (`Configs/scenes/*.yaml`; every key is documented there).
public struct SceneConfig: Sendable {
    public enum Kind: String, Sendable { case intersection, straight }

    public struct Lidar: Sendable {
        public var beams: Int
        public var verticalFOV: (lower: Double, upper: Double)  // degrees
        public var azimuthResolution: Double  // degrees
        public var range: Double
        public var rangeNoise: Double
        public var dropout: Double
        public var mountHeight: Double
    }

    public var name: String
    public var kind: Kind
    public var duration: Double
    public var rate: Double
    public var lanesPerDirection: Int
    public var laneWidth: Double
    public var roadLength: Double
    public var buildings: Int
    public var parkedCars: Int
    public var vehicles: Int
    public var agents: Int
    public var roadsideUnit: Bool
    /// The roadside unit's LiDAR yaw: degrees, `.nan` for a random one per seed, nil for the
    /// layout's (−135° at an intersection corner, −90° beside a straight road).
    public var roadsideUnitYawDeg: Double?
    public var lidar: Lidar
    public var poseNoisePosition: Double
    public var poseNoiseYawDeg: Double

    public static func load(file: String) throws(ConfigError) -> SceneConfig {
        let root = try ConfigSection.load(file: file)
        let c = try SceneConfig(root)
        try root.finish()
        return c
    }

    public init(_ root: ConfigSection) throws(ConfigError) {
        name = try root.string("name")
        let k = try root.string("kind")
        guard let kind = Kind(rawValue: k) else {
            throw ConfigError(file: root.file, key: "kind", problem: "'\(k)' is not intersection or straight")
        }
        self.kind = kind
        duration = try root.double("duration_s", default: 10, in: 0.1...3600)
        rate = try root.double("rate_hz", default: 10, in: 1...100)
        let road = try root.section("road")
        lanesPerDirection = try road.int("lanes_per_direction", default: 2, in: 1...4)
        laneWidth = try road.double("lane_width_m", default: 3.5, in: 2.5...5)
        roadLength = try road.double("length_m", default: 200, in: 60...2000)
        buildings = try root.int("buildings", default: 12, in: 0...200)
        parkedCars = try root.int("parked_cars", default: 8, in: 0...200)
        vehicles = try root.int("vehicles", default: 20, in: 1...200)
        let a = try root.section("agents")
        agents = try a.int("vehicles", default: 2, in: 0...16)
        roadsideUnit = try a.bool("roadside_unit", default: true)
        if let y = try a.optionalString("roadside_unit_yaw_deg") {
            if y == "random" {
                roadsideUnitYawDeg = .nan
            } else if let v = Double(y), (-360...360).contains(v) {
                roadsideUnitYawDeg = v
            } else {
                throw ConfigError(
                    file: root.file, key: "agents.roadside_unit_yaw_deg",
                    problem: "'\(y)' must be degrees in -360...360 or random")
            }
        }
        guard agents + (roadsideUnit ? 1 : 0) >= 1 else {
            throw ConfigError(
                file: root.file, key: "agents", problem: "needs at least one agent (vehicles or roadside_unit)")
        }
        guard agents <= vehicles else {
            throw ConfigError(
                file: root.file, key: "agents.vehicles",
                problem: "more connected vehicles (\(agents)) than vehicles (\(vehicles))")
        }
        let l = try root.section("lidar")
        let lower = try l.double("vertical_min_deg", default: -25, in: -89...0)
        let upper = try l.double("vertical_max_deg", default: 5, in: -30...45)
        guard upper > lower else {
            throw ConfigError(file: root.file, key: "lidar.vertical_max_deg", problem: "must be above vertical_min_deg")
        }
        lidar = Lidar(
            beams: try l.int("beams", default: 32, in: 1...256), verticalFOV: (lower, upper),
            azimuthResolution: try l.double("azimuth_resolution_deg", default: 0.4, in: 0.05...10),
            range: try l.double("range_m", default: 60, in: 5...300),
            rangeNoise: try l.double("range_noise_m", default: 0.02, in: 0...1),
            dropout: try l.double("dropout", default: 0.05, in: 0...0.9),
            mountHeight: try l.double("mount_height_m", default: 1.9, in: 0.5...10))
        let n = try root.section("pose_noise")
        poseNoisePosition = try n.double("position_m", default: 0, in: 0...10)
        poseNoiseYawDeg = try n.double("yaw_deg", default: 0, in: 0...45)
    }
}
