import Foundation
import SlimCore
import SlimEngine

/// Writes training shards from recordings (docs/dataset-format.md): the BEV input of every
/// agent and frame (from the same `BEVFeaturizer` the agent runs), poses, and ground-truth
/// boxes in the world frame and in each agent's frame.
public struct DatasetExporter {
    public var grid = BEVGrid()
    public var framesPerShard = 32
    public init() {}

    struct Frame {
        var timeNs: UInt64
        var clouds: [String: [SIMD4<Float>]] = [:]
        var poses: [String: Pose3] = [:]
        var measured: [String: Pose3] = [:]
        var objects: [Detection3D]?
        var visibility: Visibility?
    }

    /// Exports one recording; returns the shard paths. `progress(done, total)` is called per frame.
    public func export(recording path: String, to dir: String, progress: (Int, Int) -> Void = { _, _ in }) throws
        -> [String]
    {
        // Group messages into frames by log time.
        var frames: [UInt64: Frame] = [:]
        var agents = Set<String>()
        var cloud: [SIMD4<Float>] = []
        try MCAPReader(path: path).forEachMessage { m in
            var f = frames[m.logTime] ?? Frame(timeNs: m.logTime)
            do {
                if let (agent, kind) = Topics.parseAgent(m.channel.topic) {
                    agents.insert(agent)
                    switch kind {
                    case "lidar":
                        try PointCloud2.decode(m.data, into: &cloud)
                        f.clouds[agent] = cloud
                    case "pose": f.poses[agent] = try PoseStamped.decode(m.data).pose
                    case "pose_measured": f.measured[agent] = try PoseStamped.decode(m.data).pose
                    default: break
                    }
                } else if m.channel.topic == Topics.groundTruth {
                    f.objects = try Detection3DArray.decode(m.data).detections
                } else if m.channel.topic == Topics.visibility {
                    f.visibility = try Visibility.decode(m.data)
                }
            } catch {
                return true  // a message that does not decode is skipped (counted by the caller's inspect)
            }
            frames[m.logTime] = f
            return true
        }
        let agentList = agents.sorted()
        let ordered = frames.values.filter { $0.objects != nil && !$0.clouds.isEmpty }.sorted { $0.timeNs < $1.timeNs }
        guard !ordered.isEmpty else { throw DatasetError(problem: "\(path) has no frames with LiDAR and ground truth") }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let featurizer = BEVFeaturizer(grid: grid)
        let bev = FloatTensor(height: grid.height, width: grid.width, channels: BEVGrid.channels)
        let base = URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent
        var shards: [String] = []
        let hw = grid.height * grid.width
        for shardStart in stride(from: 0, to: ordered.count, by: framesPerShard) {
            let chunk = ordered[shardStart..<min(ordered.count, shardStart + framesPerShard)]
            var bevs: [Float16] = []
            var sampleFrame: [Int64] = []
            var sampleAgent: [Int64] = []
            var stamps: [Int64] = []
            var poses: [Double] = []
            var measured: [Double] = []
            var boxesWorld: [Float] = []
            var boxesFrame: [Int64] = []
            var boxesTrack: [Int64] = []
            var boxesPoints: [Int32] = []
            var boxesAgent: [Float] = []
            var boxesAgentSample: [Int64] = []
            for (fi, f) in chunk.enumerated() {
                let frameIndex = Int64(shardStart + fi)
                let objects = f.objects ?? []
                for o in objects {
                    boxesWorld += [
                        Float(o.center.position.x), Float(o.center.position.y), Float(o.center.position.z),
                        Float(o.size.x), Float(o.size.y), Float(o.size.z), Float(o.center.yaw),
                        Float(vehicleClassNames.firstIndex(of: o.classID) ?? 0),
                    ]
                    boxesFrame.append(frameIndex)
                    let track = Int64(o.id) ?? -1
                    boxesTrack.append(track)
                    for a in agentList {
                        var n: Int32 = 0
                        if let v = f.visibility, let ai = v.agentIDs.firstIndex(of: a),
                            let ti = v.trackIDs.firstIndex(of: UInt32(truncatingIfNeeded: track))
                        {
                            n = Int32(v.pointCounts[ai * v.trackIDs.count + ti])
                        }
                        boxesPoints.append(n)
                    }
                }
                for (ai, a) in agentList.enumerated() {
                    guard let pts = f.clouds[a], let pose = f.poses[a] else { continue }
                    let sample = Int64(sampleFrame.count)
                    pts.withUnsafeBufferPointer {
                        featurizer.featurize($0, sensorHeight: Float(pose.position.z), into: bev)
                    }
                    for c in 0..<BEVGrid.channels {
                        for i in 0..<hw { bevs.append(Float16(bev.storage[i * BEVGrid.channels + c])) }
                    }
                    sampleFrame.append(frameIndex)
                    sampleAgent.append(Int64(ai))
                    stamps.append(Int64(f.timeNs))
                    func row(_ p: Pose3) -> [Double] {
                        [
                            p.position.x, p.position.y, p.position.z, p.orientation.x, p.orientation.y, p.orientation.z,
                            p.orientation.w,
                        ]
                    }
                    poses += row(pose)
                    measured += row(f.measured[a] ?? pose)
                    // Boxes in this agent's frame, within the grid plus a margin.
                    let frame = Pose2D(x: pose.position.x, y: pose.position.y, yaw: pose.yaw)
                    for o in objects {
                        let p = frame.toLocal(SIMD2(o.center.position.x, o.center.position.y))
                        let (x, y) = (p.x, p.y)
                        guard Float(x) > grid.xMin - 5, Float(x) < grid.xMax + 5, Float(y) > grid.yMin - 5,
                            Float(y) < grid.yMax + 5
                        else { continue }
                        var n: Int32 = 0
                        if let v = f.visibility, let ai2 = v.agentIDs.firstIndex(of: a),
                            let ti = v.trackIDs.firstIndex(of: UInt32(truncatingIfNeeded: Int64(o.id) ?? -1))
                        {
                            n = Int32(v.pointCounts[ai2 * v.trackIDs.count + ti])
                        }
                        let yaw = frame.toLocal(heading: o.center.yaw)
                        boxesAgent += [
                            Float(x), Float(y), Float(o.center.position.z), Float(o.size.x), Float(o.size.y),
                            Float(o.size.z),
                            Float(yaw), Float(vehicleClassNames.firstIndex(of: o.classID) ?? 0),
                            Float(Int64(o.id) ?? -1), Float(n),
                        ]
                        boxesAgentSample.append(sample)
                    }
                }
                progress(shardStart + fi + 1, ordered.count)
            }
            var w = SafetensorsWriter()
            let s = sampleFrame.count
            w.add("bev", .f16, shape: [s, BEVGrid.channels, grid.height, grid.width], bevs)
            w.add("sample_frame", .i64, shape: [s], sampleFrame)
            w.add("sample_agent", .i64, shape: [s], sampleAgent)
            w.add("timestamp_ns", .i64, shape: [s], stamps)
            w.add("pose", .f64, shape: [s, 7], poses)
            w.add("pose_measured", .f64, shape: [s, 7], measured)
            w.add("boxes_world", .f32, shape: [boxesFrame.count, 8], boxesWorld)
            w.add("boxes_world_frame", .i64, shape: [boxesFrame.count], boxesFrame)
            w.add("boxes_world_track", .i64, shape: [boxesTrack.count], boxesTrack)
            w.add("boxes_world_points", .i32, shape: [boxesFrame.count, agentList.count], boxesPoints)
            w.add("boxes_agent", .f32, shape: [boxesAgentSample.count, 10], boxesAgent)
            w.add("boxes_agent_sample", .i64, shape: [boxesAgentSample.count], boxesAgentSample)
            let gridJSON =
                "{\"x_min\":\(grid.xMin),\"x_max\":\(grid.xMax),\"y_min\":\(grid.yMin),\"y_max\":\(grid.yMax),\"z_min\":\(grid.zMin),\"z_max\":\(grid.zMax),\"cell\":\(grid.cell)}"
            w.metadata = [
                "format": "slimsplit-bev-shard", "format_version": "1", "recording": path,
                "agents": "[" + agentList.map { "\"\($0)\"" }.joined(separator: ",") + "]",
                "channels": "[" + BEVGrid.channelNames.map { "\"\($0)\"" }.joined(separator: ",") + "]",
                "classes": "[" + vehicleClassNames.map { "\"\($0)\"" }.joined(separator: ",") + "]",
                "grid": gridJSON, "first_frame": "\(shardStart)",
            ]
            let out = "\(dir)/\(base)-\(String(format: "%05d", shardStart / framesPerShard)).safetensors"
            try w.write(to: out)
            shards.append(out)
        }
        return shards
    }
}

public struct DatasetError: Error, CustomStringConvertible {
    public var problem: String
    public var description: String { problem }
}
