import Foundation
import Logging
import SlimEngine
import SlimSensors
import SlimServer
import SlimTransport

/// Writes the server's fused detections: to an MCAP recording (`/fusion/detections`,
/// vision_msgs/msg/Detection3DArray in the world frame, plus each agent's reported pose) that
/// Foxglove opens beside the input recording, and/or as JSON lines.
///
/// The recording's open chunk is written out every `flushSeconds` (`flushIfDue`, from the
/// server's timer), so a crash loses at most that much. A write error stops the recording (the
/// file stays readable up to it), is logged once and counted (`failures`); fusion, Results, JSON
/// lines and publishing go on.
public final class DetectionRecorder: @unchecked Sendable {
    private let writer: RecordingWriter?
    private let lines: FileHandle?
    private let publisher: PublisherEndpoint?
    private let logger: Logger
    private let lock = NSLock()
    /// Writes refused since the recording failed (the first failure included).
    public private(set) var failures = 0

    public init(path: String?, jsonLines: String?, publish: String? = nil, flushSeconds: Double = 1, logger: Logger) throws {
        self.logger = logger
        writer = try path.map { try RecordingWriter(path: $0, flushInterval: flushSeconds) }
        publisher = try publish.map { try PublisherEndpoint(bind: $0) }
        if let j = jsonLines {
            if j == "-" {
                lines = FileHandle.standardOutput
            } else {
                FileManager.default.createFile(atPath: j, contents: nil)
                lines = FileHandle(forWritingAtPath: j)
            }
        } else {
            lines = nil
        }
    }

    public func record(_ o: FusionService.Output) {
        lock.lock()
        defer { lock.unlock() }
        let world = o.worldBoxes
        // JSON lines first: a crash between the two never leaves the recording ahead of the lines.
        if lines != nil || publisher != nil {
            let boxes = world.map { b in
                "{\"x\":\(Double(b.x)),\"y\":\(Double(b.y)),\"length\":\(b.length),\"width\":\(b.width),\"yaw\":\(Double(b.yaw)),\"score\":\(b.score)}"
            }.joined(separator: ",")
            let line =
                "{\"agent\":\"\(o.agent)\",\"sequence\":\(o.sequence),\"capture_time_ns\":\(o.captureTimeNs),\"fused\":[\(o.fusedAgents.map { "\"\($0)\"" }.joined(separator: ","))],\"frame\":\"map\",\"boxes\":[\(boxes)]}\n"
            lines?.write(Data(line.utf8))
            publisher?.publish(Array(line.dropLast().utf8))
        }
        if let writer {
            let stamp = RosTime(ns: o.captureTimeNs)
            let dets = world.map { b in
                Detection3D(
                    classID: "vehicle", score: Double(b.score),
                    center: Pose3(x: Double(b.x), y: Double(b.y), z: 0.8, yaw: Double(b.yaw)),
                    size: SIMD3(Double(b.length), Double(b.width), 1.6), id: "")
            }
            attempt {
                try writer.write(
                    topic: Topics.fusedDetections, type: Detection3DArray.typeName, timeNs: o.captureTimeNs,
                    data: Detection3DArray(header: RosHeader(stamp: stamp, frameID: "map"), detections: dets).encoded())
                try writer.write(
                    topic: Topics.poseMeasured(o.agent.replacingOccurrences(of: "-", with: "_")),
                    type: PoseStamped.typeName,
                    timeNs: o.captureTimeNs,
                    data: PoseStamped(
                        header: RosHeader(stamp: stamp, frameID: "map"),
                        pose: Pose3(x: Double(o.position.x), y: Double(o.position.y), yaw: Double(o.yaw))
                    ).encoded())
            }
        }
    }

    /// Writes out the recording's open chunk if it is `flushSeconds` old (call from a timer).
    public func flushIfDue() {
        lock.lock()
        defer { lock.unlock() }
        if let writer { attempt { try writer.flushIfDue() } }
    }

    /// Caller holds the lock. The first failure is logged; every refused write is counted.
    private func attempt(_ body: () throws -> Void) {
        do { try body() } catch {
            failures += 1
            if failures == 1 { logger.error("recording stopped; fusion goes on", metadata: ["error": "\(error)"]) }
        }
    }

    public var prometheusText: String {
        lock.lock()
        defer { lock.unlock() }
        guard writer != nil else { return "" }
        return """
            # HELP slimsplit_record_failures_total Writes to the recording refused since a write error stopped it (disk full, file gone).
            # TYPE slimsplit_record_failures_total counter
            slimsplit_record_failures_total \(failures)

            """
    }

    public func finish() {
        lock.lock()
        defer { lock.unlock() }
        if let writer { attempt { try writer.finish() } }
        publisher?.close()
    }
}
