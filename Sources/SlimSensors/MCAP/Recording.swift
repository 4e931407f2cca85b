import Foundation
import SlimCore

/// Topic names of SlimSplit recordings.
public enum Topics {
    public static func lidar(_ agent: String) -> String { "/agents/\(agent)/lidar" }
    public static func pose(_ agent: String) -> String { "/agents/\(agent)/pose" }
    public static func poseMeasured(_ agent: String) -> String { "/agents/\(agent)/pose_measured" }
    public static let groundTruth = "/ground_truth/objects"
    public static let visibility = "/ground_truth/visibility"
    public static let fusedDetections = "/fusion/detections"

    /// The agent id of an `/agents/<id>/...` topic and its last component.
    public static func parseAgent(_ topic: String) -> (agent: String, kind: String)? {
        let parts = topic.split(separator: "/")
        guard parts.count == 3, parts[0] == "agents" else { return nil }
        return (String(parts[1]), String(parts[2]))
    }
}

public let vehicleClassNames = ["car", "truck", "bus"]

/// Writes simulator frames (and, later, fused detections) as a ROS 2 MCAP recording.
public final class RecordingWriter {
    public let writer: MCAPWriter
    private var channels: [String: UInt16] = [:]
    private let schemaIDs: [String: UInt16]

    /// `flushInterval`: seconds after which an open chunk is written out (see `MCAPWriter`).
    public init(path: String, chunkSize: Int = 1 << 20, compression: MCAPCompression = .lz4, flushInterval: Double? = 1)
        throws(MCAPError)
    {
        writer = try MCAPWriter(
            path: path, chunkSize: chunkSize, compression: compression, flushInterval: flushInterval)
        var ids: [String: UInt16] = [:]
        for (name, text) in [
            (PointCloud2.typeName, MessageDefinitions.pointCloud2),
            (PoseStamped.typeName, MessageDefinitions.poseStamped),
            (Detection3DArray.typeName, MessageDefinitions.detection3DArray),
            (Visibility.typeName, Visibility.definition),
        ] {
            ids[name] = writer.addSchema(name: name, encoding: "ros2msg", data: Array(text.utf8))
        }
        schemaIDs = ids
    }

    public func write(topic: String, type: String, timeNs: UInt64, data: [UInt8]) throws(MCAPError) {
        let id =
            channels[topic]
            ?? {
                let c = writer.addChannel(topic: topic, schemaID: schemaIDs[type]!, messageEncoding: "cdr")
                channels[topic] = c
                return c
            }()
        try writer.write(channel: id, logTime: timeNs, data: data)
    }

    public func write(_ frame: SimFrame) throws(MCAPError) {
        let stamp = RosTime(ns: frame.timeNs)
        for a in frame.agents {
            try write(
                topic: Topics.lidar(a.id), type: PointCloud2.typeName, timeNs: frame.timeNs,
                data: PointCloud2.encode(header: RosHeader(stamp: stamp, frameID: "\(a.id)/lidar"), points: a.points))
            try write(
                topic: Topics.pose(a.id), type: PoseStamped.typeName, timeNs: frame.timeNs,
                data: PoseStamped(header: RosHeader(stamp: stamp, frameID: "map"), pose: a.pose).encoded())
            try write(
                topic: Topics.poseMeasured(a.id), type: PoseStamped.typeName, timeNs: frame.timeNs,
                data: PoseStamped(header: RosHeader(stamp: stamp, frameID: "map"), pose: a.measuredPose).encoded())
        }
        let dets = frame.objects.map { b in
            Detection3D(
                classID: vehicleClassNames[b.classID ?? 0], score: 1,
                center: Pose3(x: b.center.x, y: b.center.y, z: b.size.z / 2, yaw: b.yaw), size: b.size,
                id: "\(b.trackID ?? 0)")
        }
        try write(
            topic: Topics.groundTruth, type: Detection3DArray.typeName, timeNs: frame.timeNs,
            data: Detection3DArray(header: RosHeader(stamp: stamp, frameID: "map"), detections: dets).encoded())
        try write(
            topic: Topics.visibility, type: Visibility.typeName, timeNs: frame.timeNs,
            data: Visibility(
                stamp: stamp, agentIDs: frame.agents.map(\.id), trackIDs: frame.objects.map { UInt32($0.trackID ?? 0) },
                pointCounts: frame.hits.flatMap { $0.map { UInt32($0) } }
            ).encoded())
    }

    public func flushIfDue() throws(MCAPError) { try writer.flushIfDue() }
    public func finish() throws(MCAPError) { try writer.finish() }
}

/// What `RecordingWriter.record` wrote and how long the simulation alone took.
public struct RecordingStats: Sendable {
    public var frames: Int
    public var points: Int
    /// Time spent in `Simulator.next()` (ray casting and traffic), not in encoding or writing.
    public var simulationNs: UInt64
}

extension RecordingWriter {
    /// Simulates the `frameCount` frames of a fresh `sim` into a new recording at `path` and finishes the
    /// file: what `slimsplit record` writes (deterministic for a scene and seed). `progress` is
    /// called after each frame with the number of frames written.
    @discardableResult
    public static func record(
        _ sim: inout Simulator, to path: String, compression: MCAPCompression = .lz4, progress: (Int) -> Void = { _ in }
    ) throws(MCAPError) -> RecordingStats {
        let writer = try RecordingWriter(path: path, compression: compression)
        var stats = RecordingStats(frames: 0, points: 0, simulationNs: 0)
        for i in 0..<sim.frameCount {
            let t0 = SystemClock.monotonicNs()
            let frame = sim.next()
            stats.simulationNs += SystemClock.monotonicNs() - t0
            stats.points += frame.agents.reduce(0) { $0 + $1.points.count }
            try writer.write(frame)
            stats.frames = i + 1
            progress(i + 1)
        }
        try writer.finish()
        return stats
    }
}

/// What `slimsplit replay --inspect` prints: per topic, its type, count, rate and time span.
public struct RecordingSummary: Sendable {
    public struct Topic: Sendable {
        public var topic: String
        public var type: String
        public var count: Int
        public var firstNs: UInt64
        public var lastNs: UInt64
        public var rateHz: Double {
            count > 1 && lastNs > firstNs ? Double(count - 1) / (Double(lastNs - firstNs) / 1e9) : 0
        }
    }
    public var topics: [Topic]
    public var startNs: UInt64
    public var endNs: UInt64
    public var messages: Int

    public static func of(_ path: String) throws(MCAPError) -> RecordingSummary {
        let r = try MCAPReader(path: path)
        var byChannel: [UInt16: Topic] = [:]
        var total = 0
        try r.forEachMessage { m in
            total += 1
            if var t = byChannel[m.channel.id] {
                t.count += 1
                t.firstNs = min(t.firstNs, m.logTime)
                t.lastNs = max(t.lastNs, m.logTime)
                byChannel[m.channel.id] = t
            } else {
                byChannel[m.channel.id] = Topic(
                    topic: m.channel.topic, type: m.schema?.name ?? "(no schema)", count: 1, firstNs: m.logTime,
                    lastNs: m.logTime)
            }
            return true
        }
        let topics = byChannel.values.sorted { $0.topic < $1.topic }
        return RecordingSummary(
            topics: topics, startNs: topics.map(\.firstNs).min() ?? 0, endNs: topics.map(\.lastNs).max() ?? 0,
            messages: total)
    }
}

/// One message copied out of a recording.
public struct RecordedMessage: Sendable {
    public var topic: String
    public var schema: String
    public var logTime: UInt64
    public var data: [UInt8]
}

/// Replays a recording in log-time order (a reorder window of `window` messages absorbs the
/// small disorder real recorders leave), paced at the recorded timestamps × `speed`, or as fast
/// as possible (`speed` nil), optionally looping. Unknown topics are skipped by `topics`.
public struct Replay {
    public var path: String
    public var speed: Double?
    public var loop = false
    public var topics: Set<String>?
    public var window = 256

    public init(path: String, speed: Double? = nil, loop: Bool = false, topics: Set<String>? = nil) {
        self.path = path
        self.speed = speed
        self.loop = loop
        self.topics = topics
    }

    /// Calls `body` for each message until it returns false or the recording ends (and does
    /// not loop). Throws the recording's first error after delivering what came before it.
    public func run(_ body: (RecordedMessage) -> Bool) throws(MCAPError) {
        var pass = 0
        repeat {
            let reader = try MCAPReader(path: path)
            var pending: [RecordedMessage] = []
            var stop = false
            var pacer = speed.flatMap { $0 > 0 ? Pacer(speed: $0) : nil }
            func emit(_ m: RecordedMessage) -> Bool {
                pacer?.waitBlocking(for: m.logTime)
                return body(m)
            }
            try reader.forEachMessage { m in
                if let topics, !topics.contains(m.channel.topic) { return true }
                let copy = RecordedMessage(
                    topic: m.channel.topic, schema: m.schema?.name ?? "", logTime: m.logTime, data: Array(m.data))
                let i = pending.firstIndex { $0.logTime > copy.logTime } ?? pending.count
                pending.insert(copy, at: i)
                if pending.count > window {
                    if !emit(pending.removeFirst()) {
                        stop = true
                        return false
                    }
                }
                return true
            }
            if stop { return }
            for m in pending where !stop { if !emit(m) { stop = true } }
            if stop { return }
            pass += 1
        } while loop
    }
}
