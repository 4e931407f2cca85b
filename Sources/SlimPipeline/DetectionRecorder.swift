import Foundation
import Logging
import SlimEngine
import SlimSensors
import SlimServer
import SlimTransport
import Synchronization

/// Writes the server's fused detections: to an MCAP recording (`/fusion/detections`,
/// vision_msgs/msg/Detection3DArray in the world frame, plus each agent's reported pose) that
/// Foxglove opens beside the input recording, and/or as JSON lines.
///
/// The recording's open chunk is written out every `flushSeconds` (`flushIfDue`, from the
/// server's timer), so a crash loses at most that much. A write error stops the recording (the
/// file stays readable up to it), is logged once and counted (`failures`); fusion, Results, JSON
/// lines and publishing go on.
public final class DetectionRecorder: Sendable {
    /// The outputs, written in one order by one thread at a time.
    private struct Outputs {
        let writer: RecordingWriter?
        let lines: FileHandle?
        /// Writes refused since the recording failed (the first failure included).
        var failures = 0
    }
    private let outputs: Mutex<Outputs>
    private let hasWriter: Bool
    private let publisher: PublisherEndpoint?
    private let logger: Logger

    /// Writes refused since the recording failed (the first failure included).
    public var failures: Int { outputs.withLock { $0.failures } }

    public init(path: String?, jsonLines: String?, publish: String? = nil, flushSeconds: Double = 1, logger: Logger) throws {
        self.logger = logger
        let writer = try path.map { try RecordingWriter(path: $0, flushInterval: flushSeconds) }
        publisher = try publish.map { try PublisherEndpoint(bind: $0) }
        let lines: FileHandle?
        if let j = jsonLines {
            if j == "-" {
                lines = FileHandle.standardOutput
            } else {
                guard FileManager.default.createFile(atPath: j, contents: nil),
                    let handle = FileHandle(forWritingAtPath: j)
                else {
                    throw PipelineError("cannot create the JSON-lines file \(j) (does its directory exist and is it writable?)")
                }
                lines = handle
            }
        } else {
            lines = nil
        }
        hasWriter = writer != nil
        outputs = Mutex(Outputs(writer: writer, lines: lines))
    }

    public func record(_ o: FusionService.Output) {
        outputs.withLock { out in record(o, into: &out) }
    }

    private func record(_ o: FusionService.Output, into out: inout Outputs) {
        let world = o.worldBoxes
        // JSON lines first: a crash between the two never leaves the recording ahead of the lines.
        if out.lines != nil || publisher != nil {
            let boxes = world.map { b in
                "{\"x\":\(Double(b.x)),\"y\":\(Double(b.y)),\"length\":\(b.length),\"width\":\(b.width),\"yaw\":\(Double(b.yaw)),\"score\":\(b.score)}"
            }.joined(separator: ",")
            let line =
                "{\"agent\":\"\(o.agent)\",\"sequence\":\(o.sequence),\"capture_time_ns\":\(o.captureTimeNs),\"fused\":[\(o.fusedAgents.map { "\"\($0)\"" }.joined(separator: ","))],\"frame\":\"map\",\"boxes\":[\(boxes)]}\n"
            out.lines?.write(Data(line.utf8))
            publisher?.publish(Array(line.dropLast().utf8))
        }
        if let writer = out.writer {
            let stamp = RosTime(ns: o.captureTimeNs)
            let dets = world.map { b in
                Detection3D(
                    classID: "vehicle", score: Double(b.score),
                    center: Pose3(x: Double(b.x), y: Double(b.y), z: 0.8, yaw: Double(b.yaw)),
                    size: SIMD3(Double(b.length), Double(b.width), 1.6), id: "")
            }
            attempt(&out) {
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
        outputs.withLock { out in
            if let writer = out.writer { attempt(&out) { try writer.flushIfDue() } }
        }
    }

    /// Under the lock. The first failure is logged; every refused write is counted.
    private func attempt(_ out: inout Outputs, _ body: () throws -> Void) {
        do { try body() } catch {
            out.failures += 1
            if out.failures == 1 {
                logger.error("recording stopped; fusion goes on", metadata: ["error": "\(error)"])
            }
        }
    }

    public var prometheusText: String {
        guard hasWriter else { return "" }
        let failures = self.failures
        return """
            # HELP slimsplit_record_failures_total Writes to the recording refused since a write error stopped it (disk full, file gone).
            # TYPE slimsplit_record_failures_total counter
            slimsplit_record_failures_total \(failures)

            """
    }

    public func finish() {
        outputs.withLock { out in
            if let writer = out.writer { attempt(&out) { try writer.finish() } }
        }
        publisher?.close()
    }
}
