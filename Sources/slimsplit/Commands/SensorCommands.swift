import ArgumentParser
import Foundation
import SlimEngine
import SlimPipeline
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
        var bar = ProgressBar("record \(config.name)", total: sim.frameCount)
        let start = SystemClock.monotonicNs()
        let stats = try RecordingWriter.record(
            &sim, to: out, compression: MCAPCompression(rawValue: compression) ?? .lz4) { bar.update($0) }
        let points = stats.points
        let simNs = stats.simulationNs
        let wall = Double(SystemClock.monotonicNs() - start) / 1e9
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
              slimsplit replay recording.mcap --as velodyne --agent car_1 --to udp://127.0.0.1:2368
                                                                   the agent's LiDAR as a Velodyne's packet stream
              slimsplit replay recording.mcap --as velodyne --agent car_1 --to pcap:car_1.pcap
                                                                   the same as a packet capture (Wireshark, tcpdump)
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

    @Option(name: .customLong("as"), help: "Send the LiDAR of --agent as a sensor's packets: velodyne.")
    var format: String?

    @Option(help: "With --as: udp://HOST:PORT, or pcap:FILE to write a capture.")
    var to: String?

    @Option(help: "With --as: the recording's agent whose LiDAR is sent (default: the first).")
    var agent: String?

    @Option(help: "With --as velodyne: \(VelodyneModel.allCases.map(\.rawValue).joined(separator: " or ")).")
    var lidarModel: String = "VLP-16"

    func run() throws {
        if let format {
            try sendAsSensor(format)
            return
        }
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

    /// `--as velodyne`: each sweep of the agent as the packets a Velodyne would send, paced over
    /// the sweep's period at `--speed` (default 1), to a UDP socket or a capture file. Prints a
    /// JSON summary: sweeps, packets, points per sweep carried, points out of the format's range.
    private func sendAsSensor(_ format: String) throws {
        guard format == "velodyne" else { throw ValidationError("--as: '\(format)' is not a sensor format (velodyne)") }
        guard let model = VelodyneModel.named(lidarModel) else {
            throw ValidationError("--lidar-model: '\(lidarModel)' is not one of \(VelodyneModel.allCases.map(\.rawValue))")
        }
        guard let to, to.hasPrefix("udp://") || to.hasPrefix("pcap:") else {
            throw ValidationError("--as velodyne needs --to udp://HOST:PORT or --to pcap:FILE")
        }
        let rec = try RecordingFrames(path: file)
        guard let who = agent ?? rec.agents.first, rec.agents.contains(who) else {
            throw ValidationError("\(file) has no agent \(agent ?? "") (agents: \(rec.agents))")
        }
        let sweeps = rec.frames.compactMap { f in f.agents[who].map { (f.timeNs, $0.points) } }.filter { !$0.1.isEmpty }
        guard sweeps.count > 0 else { throw ValidationError("\(file): no LiDAR for \(who)") }
        let encoder = VelodyneEncoder(model: model)
        let speed = self.speed ?? 1
        let period = sweeps.count > 1 ? Double(sweeps.last!.0 - sweeps[0].0) / Double(sweeps.count - 1) / 1e9 : 0.1
        var sender: UDPSender?
        if to.hasPrefix("udp://") { sender = try UDPSender(to) }
        var capture: [Pcap.Datagram] = []
        var counts: [Int] = []
        var packets = 0
        var outOfRange = 0
        var pacer = Pacer(origin: 0)  // stamps: ns since the stream's start, speed already applied
        var loops = 0
        repeat {
            for (i, (t, points)) in sweeps.enumerated() {
                let sweepStart = Double(loops * sweeps.count + i) * period / speed
                let enc = encoder.encode(points, timestampUs: UInt32((t / 1000) % 3_600_000_000))
                counts.append(enc.carried)
                outOfRange += enc.outOfRange
                for (k, p) in enc.packets.enumerated() {
                    let at = sweepStart + Double(k) / Double(enc.packets.count) * period / speed
                    if let sender {
                        pacer.waitBlocking(for: UInt64(at * 1e9))
                        sender.send(p)
                    } else {
                        capture.append(Pcap.Datagram(timeNs: sweeps[0].0 + UInt64(at * 1e9), payload: p))
                    }
                    packets += 1
                }
            }
            loops += 1
        } while loop
        if to.hasPrefix("pcap:") {
            let path = String(to.dropFirst(5))
            guard FileManager.default.createFile(atPath: path, contents: Data(Pcap.write(capture, port: 2368))) else {
                throw ValidationError("--to: cannot write \(path)")
            }
        }
        let summary: [String: Any] = [
            "agent": who, "lidar_model": model.rawValue, "sweeps": counts.count, "packets": packets,
            "points_per_sweep": counts, "out_of_range": outOfRange, "to": to,
        ]
        let json = try JSONSerialization.data(withJSONObject: summary, options: [.sortedKeys])
        print(String(decoding: json, as: UTF8.self))
    }
}

/// A UDP socket sending to one `udp://HOST:PORT` (IPv4).
final class UDPSender {
    private let fd: Int32
    private var addr = sockaddr_in()
    init(_ url: String) throws {
        let target = url.dropFirst("udp://".count)
        guard let colon = target.lastIndex(of: ":"), let port = UInt16(target[target.index(after: colon)...]) else {
            throw ValidationError("'\(url)' must be udp://HOST:PORT")
        }
        fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw ValidationError("socket: \(String(cString: strerror(errno)))") }
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(port.bigEndian)
        addr.sin_addr.s_addr = inet_addr(String(target[..<colon]))
    }
    deinit { close(fd) }
    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { b in
            withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, b.baseAddress, b.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
        }
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
