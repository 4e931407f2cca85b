import Foundation

/// One simulated frame: every agent's sweep and pose, and the ground truth.
public struct SimFrame: Sendable {
    public struct AgentFrame: Sendable {
        public var id: String
        /// Points in the sensor frame: x, y, z, intensity.
        public var points: [SIMD4<Float>]
        /// True sensor pose in the world frame (z = mount height).
        public var pose: Pose3
        /// Pose as the agent measures it (true pose plus the scene's pose noise).
        public var measuredPose: Pose3
    }

    public var timeNs: UInt64
    public var agents: [AgentFrame]
    /// Every vehicle (moving and parked) in the world frame.
    public var objects: [SceneBox]
    /// points[agent][object]: how many of each agent's points hit each object.
    public var hits: [[Int]]
}

/// The multi-agent LiDAR scene simulator. Deterministic for a seed.
public struct Simulator {
    public let config: SceneConfig
    var world: World
    var rng: SimRandom
    var sweep: LidarSweep
    public let startNs: UInt64
    public private(set) var frameIndex = 0
    public let agentIDs: [String]

    public init(config: SceneConfig, seed: UInt64, startNs: UInt64 = 1_700_000_000_000_000_000) {
        self.config = config
        rng = SimRandom(seed: seed)
        world = World(config: config, rng: &rng)
        sweep = LidarSweep(lidar: config.lidar)
        self.startNs = startNs
        agentIDs = (0..<config.agents).map { "car_\($0 + 1)" } + (config.roadsideUnit ? ["rsu_1"] : [])
    }

    public var frameCount: Int { Int((config.duration * config.rate).rounded()) }

    /// Simulates the next frame, then advances the world by one period.
    public mutating func next() -> SimFrame {
        let t = startNs + UInt64(Double(frameIndex) / config.rate * 1e9)
        let boxes = world.boxes
        var agents: [SimFrame.AgentFrame] = []
        var hits: [[Int]] = []
        for (i, id) in agentIDs.enumerated() {
            let origin: SIMD3<Double>
            let yaw: Double
            let exclude: Int?
            if i < config.agents {
                let b = boxes[i]
                origin = SIMD3(b.center.x, b.center.y, config.lidar.mountHeight)
                yaw = b.yaw
                exclude = i
            } else {
                origin = SIMD3(world.rsu!.position.x, world.rsu!.position.y, max(config.lidar.mountHeight, 5))
                yaw = world.rsu!.yaw
                exclude = nil
            }
            var points: [SIMD4<Float>] = []
            var h: [Int] = []
            sweep.sweep(origin: origin, yaw: yaw, boxes: boxes, exclude: exclude, rng: &rng, points: &points, hits: &h)
            let pose = Pose3(x: origin.x, y: origin.y, z: origin.z, yaw: yaw)
            let noisy = Pose3(
                x: origin.x + config.poseNoisePosition * rng.normal(),
                y: origin.y + config.poseNoisePosition * rng.normal(),
                z: origin.z, yaw: yaw + config.poseNoiseYawDeg * .pi / 180 * rng.normal())
            agents.append(SimFrame.AgentFrame(id: id, points: points, pose: pose, measuredPose: noisy))
            hits.append(h)
        }
        let vehicleIndices = boxes.indices.filter { boxes[$0].trackID != nil }
        let frame = SimFrame(
            timeNs: t, agents: agents, objects: vehicleIndices.map { boxes[$0] },
            hits: hits.map { h in vehicleIndices.map { h[$0] } })
        world.step(1 / config.rate)
        frameIndex += 1
        return frame
    }
}
