import Foundation
import SlimCore

/// The frames of a recording, grouped by capture time: each agent's cloud and poses, and the
/// ground truth. Loaded whole (recordings for evaluation and demos are small); a message that
/// does not decode is skipped and counted.
public struct RecordingFrames: Sendable {
    public struct AgentFrame: Sendable {
        public var points: [SIMD4<Float>]
        public var pose: Pose3?
        public var measuredPose: Pose3?
    }

    public struct Frame: Sendable {
        public var timeNs: UInt64
        public var agents: [String: AgentFrame] = [:]
        public var objects: [Detection3D] = []
        /// LiDAR points of each agent on each object (from /ground_truth/visibility), by track id.
        public var pointsByTrack: [String: Int] = [:]
        /// How many agents see each track with at least one LiDAR point.
        public var agentsByTrack: [String: Int] = [:]

        /// Ground-truth vehicles in `agent`'s frame by the V2X convention of
        /// training/evaluate.py: centre within ±`half` m, seen by at least one agent (≥ 1
        /// point), not the agent's own vehicle (`car_k` is track k). Also returns, per box, how
        /// many agents see it, and the own box.
        public func groundTruth(for agent: String, half: Float = 32) -> (
            boxes: [BEVBox], seenBy: [Int], own: [BEVBox]
        ) {
            guard let pose = agents[agent]?.pose else { return ([], [], []) }
            let ownTrack = agent.hasPrefix("car_") ? String(agent.dropFirst(4)) : nil
            var boxes: [BEVBox] = []
            var seenBy: [Int] = []
            var own: [BEVBox] = []
            let frame = Pose2D(x: pose.position.x, y: pose.position.y, yaw: pose.yaw)
            for o in objects {
                let p = frame.toLocal(SIMD2(o.center.position.x, o.center.position.y))
                let b = BEVBox(
                    x: Float(p.x), y: Float(p.y), length: Float(o.size.x), width: Float(o.size.y),
                    yaw: Float(frame.toLocal(heading: o.center.yaw)))
                if o.id == ownTrack {
                    own.append(b)
                    continue
                }
                guard (pointsByTrack[o.id] ?? 0) >= 1, abs(b.x) < half, abs(b.y) < half else { continue }
                boxes.append(b)
                seenBy.append(agentsByTrack[o.id] ?? 0)
            }
            return (boxes, seenBy, own)
        }
    }

    public var frames: [Frame]
    public var agents: [String]
    public var undecodable = 0

    public init(path: String) throws(MCAPError) {
        var byTime: [UInt64: Frame] = [:]
        var agentSet = Set<String>()
        var bad = 0
        try MCAPReader(path: path).forEachMessage { m in
            var f = byTime[m.logTime] ?? Frame(timeNs: m.logTime)
            do {
                if let (agent, kind) = Topics.parseAgent(m.channel.topic) {
                    agentSet.insert(agent)
                    var a = f.agents[agent] ?? AgentFrame(points: [])
                    switch kind {
                    case "lidar": try PointCloud2.decode(m.data, into: &a.points)
                    case "pose": a.pose = try PoseStamped.decode(m.data).pose
                    case "pose_measured": a.measuredPose = try PoseStamped.decode(m.data).pose
                    default: break
                    }
                    f.agents[agent] = a
                } else if m.channel.topic == Topics.groundTruth {
                    f.objects = try Detection3DArray.decode(m.data).detections
                } else if m.channel.topic == Topics.visibility {
                    let v = try Visibility.decode(m.data)
                    for (ti, t) in v.trackIDs.enumerated() {
                        var n = 0
                        var seeing = 0
                        for ai in v.agentIDs.indices {
                            let k = Int(v.pointCounts[ai * v.trackIDs.count + ti])
                            n += k
                            if k > 0 { seeing += 1 }
                        }
                        f.pointsByTrack["\(t)"] = n
                        f.agentsByTrack["\(t)"] = seeing
                    }
                }
            } catch {
                bad += 1
            }
            byTime[m.logTime] = f
            return true
        }
        frames = byTime.values.sorted { $0.timeNs < $1.timeNs }
        agents = agentSet.sorted()
        undecodable = bad
    }
}
