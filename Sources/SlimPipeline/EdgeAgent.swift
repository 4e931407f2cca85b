import Foundation
import Logging
import SlimAgent
import SlimCore
import SlimEngine
import SlimPerception
import SlimSensors
import SlimWire

/// The edge agent's loop: frames from a source (a recording replayed at its recorded rate, or
/// a live Velodyne sensor) through the edge encoder to the server, with the adaptation policy.
/// Every sweep, whatever its source, takes one path (``send(_:pose:sensorHeight:)``): the
/// adaptation (or the server's caps) first, then featurize, encode, quantize and submit.
/// The command line (`slimsplit agent`) only parses options and runs one of these.
public final class EdgeAgent {
    /// The agent's sessions: its home server, and the others of a fleet during a handover.
    public let links: Roaming
    /// The home link now (it changes when the agent moves to another region's server).
    public var agent: FeatureAgent { links.home }
    public let edge: EdgeEncoder
    public let source: AgentConfig.RecordingSource
    public let stages: AgentStageTimes
    let logger: Logger
    private var controller: WidthController?
    /// The whole detector on the agent, for the boxes rung (adapting agents whose model has the
    /// server half).
    private let own: OwnDetector?
    private var appliedCapEpoch: UInt32?
    private let fixedWidth: Int

    public init(
        links: Roaming, edge: EdgeEncoder, source: AgentConfig.RecordingSource, stages: AgentStageTimes,
        logger: Logger
    ) throws(PipelineError) {
        self.links = links
        self.edge = edge
        self.source = source
        self.stages = stages
        self.logger = logger
        fixedWidth = edge.widthIndex
        // Adaptation: the configurations of the model's measured rate–accuracy table.
        if let deadline = source.adaptDeadline {
            guard let table = edge.rateAccuracy else {
                throw PipelineError(
                    "source.adapt needs the model's rate-accuracy table, which \(source.model) lacks "
                        + "(training/evaluate.py --write-table adds it)")
            }
            var c = WidthController(configurations: table)
            c.deadlineSeconds = deadline
            do {
                own = try OwnDetector(modelFile: source.model)
                c.fallsToBoxes = true
            } catch {
                own = nil
                logger.warning(
                    "no boxes rung: the model's server half does not load", metadata: ["detail": "\(error)"])
            }
            controller = c
        } else {
            own = nil
        }
    }

    /// Whether the adaptation has the agent send its own detections now (the boxes rung).
    public var sendsBoxes: Bool { controller?.sendsBoxes == true && own != nil }

    /// Sends one sweep (points in the agent's frame, z relative to the sensor); returns the bytes
    /// submitted, or nil when the rate cap or the link refused it.
    public func send(_ points: [SIMD4<Float>], pose: Pose3, sensorHeight: Double) -> Int? {
        links.step(now: SystemClock.monotonicNs())
        adapt()
        guard !agent.rateCapped() else { return nil }
        if sendsBoxes, let own { return sendBoxes(own, points, pose: pose, sensorHeight: sensorHeight) }
        let shape = points.withUnsafeBufferPointer { edge.encode($0, sensorHeight: Float(sensorHeight)) }
        let h = FeatureFrameHeader(
            agentID: agent.identity.agentID, sequence: 0, captureTimeNs: SystemClock.wallNs(),
            position: pose.position, orientation: pose.orientation, modelID: edge.modelID,
            widthIndex: UInt8(edge.widthIndex), bits: edge.frameQuantization.bits, channels: shape.channels,
            height: shape.height, width: shape.width, quant: edge.frameQuantization.quant, masked: shape.masked, codec: .lz4)
        let bytes = edge.dense.withUnsafeBufferPointer { d in
            edge.mask.withUnsafeBytes { m in links.submit(h, dense: d, mask: shape.masked ? m : nil) }
        }
        if let bytes { controller?.observe(bytes: bytes) }
        let st = edge.lastStageSeconds
        stages.add("featurize", st.featurize)
        stages.add("encode", st.encode)
        stages.add("quantize", st.quantize)
        stages.add("pack", agent.stats.lastPackSeconds)
        return bytes
    }

    /// The boxes rung: the whole detector here, its boxes to the server (PROTOCOL.md §4.7).
    private func sendBoxes(_ own: OwnDetector, _ points: [SIMD4<Float>], pose: Pose3, sensorHeight: Double) -> Int? {
        let boxes = points.withUnsafeBufferPointer { own.detect(edge, $0, sensorHeight: Float(sensorHeight)) }
        let message = Boxes(
            agentID: agent.identity.agentID, sequence: 0, captureTimeNs: SystemClock.wallNs(),
            position: pose.position, orientation: pose.orientation, detections: boxes.map { Detection($0) })
        let bytes = links.submit(boxes: message)
        if let bytes { controller?.observe(bytes: bytes) }
        stages.add("encode", own.lastSeconds.encode)
        stages.add("detect_own", own.lastSeconds.detect)
        return bytes
    }

    private func adapt() {
        if var c = controller {
            let wasBoxes = c.sendsBoxes
            let g = agent.goodput
            let caps = agent.control
            // A frame still unacknowledged is a round trip at least that long: on a link that just
            // collapsed no Ack comes for seconds, and the last estimate would still say it is fast.
            let waiting = agent.inFlightAge(now: SystemClock.monotonicNs()) ?? 0
            let cfg = c.update(
                goodputBytesPerSecond: g.bytesPerSecond, queueingSeconds: Double(g.queueingNs) / 1e9,
                rttSeconds: Double(max(g.lastRTTNs, waiting)) / 1e9,
                maxWidthIndex: Int(caps?.maxWidthIndex ?? 255), maxBits: Int(caps?.maxBits ?? 8))
            controller = c
            if c.sendsBoxes != wasBoxes {
                logger.info(
                    c.sendsBoxes ? "adapting: boxes (no map fits the link)" : "adapting: maps again",
                    metadata: ["goodput_kbit_s": "\(Int((g.bytesPerSecond ?? 0) * 8 / 1000))"])
            }
            if edge.widthIndex != cfg.widthIndex || edge.bits != cfg.bits || edge.threshold != cfg.threshold
                || edge.codebook != cfg.codebook
            {
                logger.info(
                    "adapting",
                    metadata: [
                        "width_index": "\(cfg.widthIndex)", "bits": "\(cfg.bits)",
                        "threshold": "\(cfg.threshold)", "payload": "\(cfg.codebook ? "codebook" : "scalar")",
                        "goodput_kbit_s": "\(Int((g.bytesPerSecond ?? 0) * 8 / 1000))",
                    ])
                edge.widthIndex = cfg.widthIndex
                edge.bits = cfg.bits
                edge.threshold = cfg.threshold
                edge.codebook = cfg.codebook
            }
        } else if let caps = agent.control, caps.epoch != appliedCapEpoch {
            // Fixed configuration, within the server's caps (worked out once per Control).
            appliedCapEpoch = caps.epoch
            let wi = min(fixedWidth, Int(caps.maxWidthIndex))
            let bits =
                (1...min(source.bits, max(Int(caps.maxBits), 1))).last {
                    edge.quantization[QuantKey(widthIndex: wi, bits: $0)] != nil
                } ?? source.bits
            if wi != edge.widthIndex || bits != edge.bits {
                logger.info("capped by the server", metadata: ["width_index": "\(wi)", "bits": "\(bits)"])
                edge.widthIndex = wi
                edge.bits = bits
            }
        }
    }

    /// Replays one agent of a recording through the edge encoder at the recorded rate.
    public func replay(frames: Int?, stop: Locked<Bool>, report: FrameReport?) async throws {
        let rec = try RecordingFrames(path: source.recording)
        let mine = rec.frames.filter { $0.agents[source.agent]?.points.isEmpty == false }
        guard !mine.isEmpty else {
            throw PipelineError("\(source.recording) has no LiDAR for agent \(source.agent) (agents: \(rec.agents))")
        }
        logger.info(
            "replaying",
            metadata: ["recording": "\(source.recording)", "agent": "\(source.agent)", "frames": "\(mine.count)"])
        var sent = 0
        let truthHalf = edge.featurizer.grid.xMax
        // Loops continue the recorded rhythm: the first sweep again one frame period after the last.
        let span = mine.last!.timeNs - mine[0].timeNs
        let period = mine.count > 1 ? span / UInt64(mine.count - 1) : 100_000_000
        var pacer = Pacer(origin: mine[0].timeNs)
        repeat {
            defer { pacer.restart(at: max(pacer.startNs + span + period, SystemClock.monotonicNs())) }
            for (fi, f) in mine.enumerated() {
                if stop.value || (frames.map { sent >= $0 } ?? false) { return }
                let due = pacer.due(f.timeNs)
                try await pacer.wait(for: f.timeNs)
                let af = f.agents[source.agent]!
                guard let truth = af.pose else { continue }
                guard let bytes = send(af.points, pose: af.measuredPose ?? truth, sensorHeight: truth.position.z)
                else { continue }
                if let report {
                    let gt = f.groundTruth(for: source.agent, half: truthHalf)
                    report.sent(
                        sequence: agent.lastSequence,
                        .init(
                            frame: fi, dueNs: due, wallNs: SystemClock.wallNs(), boxes: sendsBoxes,
                            widthIndex: edge.widthIndex, bits: edge.bits, threshold: edge.threshold,
                            bytes: bytes, goodputBytesPerSecond: agent.goodput.bytesPerSecond,
                            rttNs: agent.goodput.lastRTTNs,
                            truth: gt.boxes, own: gt.own))
                    report.expire(atNs: SystemClock.monotonicNs())
                }
                sent += 1
            }
        } while source.loop && !stop.value
    }

    /// Streams a live Velodyne sensor (or a capture of one): packets are read and assembled into
    /// sweeps on a thread of their own; each sweep goes through the edge encoder as it completes
    /// (the newest waits if the encoder is busy; older ones are dropped and counted).
    public func live(_ live: AgentConfig.VelodyneSource, frames: Int?, stop: Locked<Bool>) async throws -> VelodyneInput
    {
        let input = try VelodyneInput(source: live, logger: logger)
        let pose = Pose3(x: live.poseX, y: live.poseY, z: live.mountZ, yaw: live.poseYaw)
        let c = Float(cos(live.mountYaw))
        let s = Float(sin(live.mountYaw))
        let mx = Float(live.mountX)
        let my = Float(live.mountY)
        var points: [SIMD4<Float>] = []
        var sent = 0
        for await sweep in input.sweeps(stop: stop) {
            // Sensor frame → the agent's frame (mounting offset and heading; z stays above the sensor).
            points.removeAll(keepingCapacity: true)
            for p in sweep { points.append(SIMD4(c * p.x - s * p.y + mx, s * p.x + c * p.y + my, p.z, p.w)) }
            if send(points, pose: pose, sensorHeight: live.mountZ) != nil { sent += 1 }
            if frames.map({ sent >= $0 }) ?? false { break }
        }
        input.close()
        return input
    }
}

/// Recent per-stage times of an agent (seconds), for its Prometheus endpoint.
public final class AgentStageTimes: Sendable {
    private let times = Locked<[String: [Double]]>([:])

    public init() {}

    public func add(_ stage: String, _ s: Double) {
        times.withLock { t in
            var v = t[stage] ?? []
            if v.count >= 512 { v.removeFirst(v.count - 511) }
            v.append(s)
            t[stage] = v
        }
    }

    /// Stage, p50, p99.
    public func quantiles() -> [(String, Double, Double)] {
        times.withLock { t in
            t.keys.sorted().map { k in
                let v = t[k]!.sorted()
                return (k, v[v.count / 2], v[min(v.count - 1, Int(0.99 * Double(v.count)))])
            }
        }
    }
}
