import ArgumentParser
import Foundation
import SlimEngine
import SlimSensors
import SlimCore

/// Simulator and featurizer throughput, one core.
struct SensorBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sensors",
        abstract: "Simulator speed (× real time, 4 agents) and BEV featurizer throughput (points/s), one core, JSON.")

    @Option(help: "Scene config.")
    var scene: String = "Configs/scenes/intersection.yaml"

    func run() throws {
        var config = try SceneConfig.load(file: scene)
        config.agents = 3
        config.roadsideUnit = true
        config.vehicles = max(config.vehicles, 3)
        config.duration = 5
        var sim = Simulator(config: config, seed: 1)
        var frames: [SimFrame] = []
        let t0 = SystemClock.monotonicNs()
        for _ in 0..<sim.frameCount { frames.append(sim.next()) }
        let simS = Double(SystemClock.monotonicNs() - t0) / 1e9
        let path = NSTemporaryDirectory() + "slimsplit-bench-\(getpid()).mcap"
        let t1 = SystemClock.monotonicNs()
        let w = try RecordingWriter(path: path)
        for f in frames { try w.write(f) }
        try w.finish()
        let writeS = Double(SystemClock.monotonicNs() - t1) / 1e9
        try? FileManager.default.removeItem(atPath: path)

        let featurizer = BEVFeaturizer()
        let out = FloatTensor(height: 128, width: 128, channels: 8)
        let clouds = frames.flatMap { $0.agents.map(\.points) }
        let total = clouds.reduce(0) { $0 + $1.count }
        let t2 = SystemClock.monotonicNs()
        var reps = 0
        repeat {
            for c in clouds { c.withUnsafeBufferPointer { featurizer.featurize($0, sensorHeight: 1.9, into: out) } }
            reps += 1
        } while SystemClock.monotonicNs() - t2 < 1_000_000_000
        let featS = Double(SystemClock.monotonicNs() - t2) / 1e9
        let doc: [String: Any] = [
            "benchmark": "sensors", "scene": scene, "agents": sim.agentIDs.count, "frames": frames.count,
            "lidar": ["beams": config.lidar.beams, "azimuth_resolution_deg": config.lidar.azimuthResolution],
            "points_per_sweep": total / max(clouds.count, 1),
            "simulation_x_real_time": (Double(frames.count) / config.rate / simS * 10).rounded() / 10,
            "simulation_and_mcap_writing_x_real_time": (Double(frames.count) / config.rate / (simS + writeS) * 10)
                .rounded() / 10,
            "featurizer_points_per_s": Int(Double(total * reps) / featS),
            "featurizer_ms_per_sweep": (featS / Double(reps * clouds.count) * 1e6).rounded() / 1000,
            "cpu": cpuName(), "threads": 1,
        ]
        print(
            String(
                decoding: try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys]),
                as: UTF8.self))
    }
}
