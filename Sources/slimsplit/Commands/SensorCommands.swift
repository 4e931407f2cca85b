import ArgumentParser
import Foundation
import SlimEngine
import SlimSensors
import SlimTransport

struct RecordCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "record",
        abstract: "Simulate a multi-agent LiDAR scene and write it as a ROS 2 MCAP recording with ground truth.",
        discussion: """
            Topics: /agents/<id>/lidar (sensor_msgs/msg/PointCloud2, sensor frame), /agents/<id>/pose and
            /agents/<id>/pose_measured (geometry_msgs/msg/PoseStamped, world frame), /ground_truth/objects
            (vision_msgs/msg/Detection3DArray, world frame), /ground_truth/visibility (points of each agent on
            each object). Deterministic for a seed. Open the file in Foxglove or read it with the mcap tools.
              slimsplit record --scene Configs/scenes/intersection.yaml --seed 1 --out intersection-1.mcap
            """)

    @Option(help: "Scene config (YAML), e.g. Configs/scenes/intersection.yaml.")
    var scene: String

    @Option(help: "Random seed: the same seed gives the same recording.")
    var seed: UInt64 = 1

    @Option(help: "Output MCAP file.")
    var out: String

    @Option(help: "Override the scene's duration (seconds).")
    var duration: Double?

    @Option(
        help: "Chunk compression: lz4 (what ros2 bag writes), zstd (the mcap tools' default; smaller, slower) or none.")
    var compression: String = "lz4"

    func validate() throws {
        guard MCAPCompression(rawValue: compression) != nil else {
            throw ValidationError("--compression: lz4, zstd or none, not '\(compression)'")
        }
    }

    func run() throws {
        var config = try SceneConfig.load(file: scene)
        if let duration { config.duration = duration }
        var sim = Simulator(config: config, seed: seed)
        let writer = try RecordingWriter(path: out, compression: MCAPCompression(rawValue: compression) ?? .lz4)
        var bar = ProgressBar("record \(config.name)", total: sim.frameCount)
        var simNs: UInt64 = 0
        var points = 0
        let start = Clock.monotonicNs()
        for i in 0..<sim.frameCount {
            let t0 = Clock.monotonicNs()
            let frame = sim.next()
            simNs += Clock.monotonicNs() - t0
            points += frame.agents.reduce(0) { $0 + $1.points.count }
            try writer.write(frame)
            bar.update(i + 1)
        }
        try writer.finish()
        let wall = Double(Clock.monotonicNs() - start) / 1e9
        let simulated = Double(sim.frameCount) / config.rate
        let size = (try? FileManager.default.attributesOfItem(atPath: out)[.size] as? Int) ?? 0
        print(
            """
            wrote \(out): \(sim.frameCount) frames × \(sim.agentIDs.count) agents (\(sim.agentIDs.joined(separator: ", "))), \
            \(points) points, \(size / 1024) KiB
            simulated \(fmt(simulated, 1)) s in \(fmt(wall, 2)) s: \(fmt(simulated / max(wall, 1e-9), 1))× real time \
            (ray casting alone: \(fmt(simulated / max(Double(simNs) / 1e9, 1e-9), 1))×), one core
            """)
    }
}

struct ReplayCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "replay",
        abstract: "Inspect or replay an MCAP recording.",
        discussion: """
              slimsplit replay --inspect recording.mcap            topics, types, counts, rates, time span
              slimsplit replay recording.mcap --speed 1 --loop     one line per message, paced at recorded time
            """)

    @Argument(help: "MCAP file.")
    var file: String

    @Flag(help: "Print topics, types, message counts, rates and the time span, then exit.")
    var inspect = false

    @Option(help: "Playback speed factor (1 = real time); omit to replay as fast as possible.")
    var speed: Double?

    @Flag(help: "Start again at the end.")
    var loop = false

    @Option(parsing: .upToNextOption, help: "Only these topics.")
    var topics: [String] = []

    func run() throws {
        if inspect {
            let s = try RecordingSummary.of(file)
            var t = TextTable(["topic", "type", "messages", "rate Hz"])
            for tp in s.topics { t.add([tp.topic, tp.type, "\(tp.count)", fmt(tp.rateHz, 1)]) }
            print(t.render())
            print(
                "\(s.messages) messages over \(fmt(Double(s.endNs &- s.startNs) / 1e9, 2)) s (\(s.startNs) … \(s.endNs) ns)"
            )
            return
        }
        var n = 0
        try Replay(path: file, speed: speed, loop: loop, topics: topics.isEmpty ? nil : Set(topics)).run { m in
            n += 1
            print("\(m.logTime)  \(m.topic)  \(m.schema)  \(m.data.count) B")
            return true
        }
        FileHandle.standardError.write(Data("\(n) messages\n".utf8))
    }
}

struct DatasetCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dataset",
        abstract: "Training data from recordings.",
        subcommands: [DatasetExportCommand.self])
}

struct DatasetExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write safetensors shards of BEV inputs, poses and ground truth (docs/dataset-format.md).")

    @Option(parsing: .upToNextOption, help: "Recordings (MCAP) made by `slimsplit record`.")
    var recordings: [String]

    @Option(help: "Output folder.")
    var out: String

    @Option(help: "Frames per shard.")
    var framesPerShard: Int = 32

    func run() throws {
        var exporter = DatasetExporter()
        exporter.framesPerShard = framesPerShard
        var total = 0
        for r in recordings {
            var bar = ProgressBar("export \(URL(fileURLWithPath: r).lastPathComponent)", total: 1)
            let shards = try exporter.export(recording: r, to: out) { done, all in
                if bar.total != all {
                    bar = ProgressBar("export \(URL(fileURLWithPath: r).lastPathComponent)", total: all)
                }
                bar.update(done)
            }
            total += shards.count
        }
        print("wrote \(total) shards to \(out)")
    }
}
