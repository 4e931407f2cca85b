import Foundation
import Logging
import SlimAgent
import SlimEngine
import SlimPerception
import SlimSensors
import SlimServer
import SlimTransport
import SlimWire

/// A server and one agent per recorded agent, on real ZeroMQ sockets (Curve on), replaying a
/// recording in lock-step: every agent sends frame t, the server fuses as soon as all of frame
/// t has arrived and answers each agent with detections in its frame, then frame t + 1 goes.
/// Deterministic, so its AP can be compared with the offline pipeline's and with
/// training/evaluate.py. `slimsplit eval`, `slimsplit demo` and the integration test run it.
public final class CooperativeSession: @unchecked Sendable {
    public struct Config: Sendable {
        public var recording: String
        public var model: String
        public var widthIndex: Int? = nil
        public var bits = 8
        public var threshold: Float = 0
        /// Codebook indices instead of scalar codes (a model with residual codebooks; `bits` does not apply).
        public var codebook = false
        public var fusion: CooperativeDetector.Fusion = .attention
        public var agents: [String]? = nil
        public var maxFrames: Int? = nil
        /// Frames to skip at the start (training/evaluate.py skips frame 0).
        public var firstFrame = 0
        /// Float encoder on the agents (to compare with training/evaluate.py); default int8.
        public var floatEncoder = false
        /// Float server backbone (as training/evaluate.py runs it); default int8 where the model has it.
        public var floatServer = false
        public var lz4 = true
        /// Send frames at their recorded rate instead of as fast as the pipeline goes.
        public var realTime = false
        /// Threads the server fuses on (FusionService.Options.threads; 0: one per core).
        public var fusionThreads = 1
        /// Times to play the recording (each pass continues the recorded rhythm).
        public var loops = 1
        /// Every agent runs the whole detector itself and sends its boxes (the boxes rung,
        /// PROTOCOL.md §4.7): live late fusion, the baseline a map must beat. Width, bits and
        /// threshold then do not apply (the agent's detector runs at full width, 8 bits).
        public var lateFusion = false
        /// These agents send boxes, the others maps (a mixed group: the server fuses the maps and
        /// merges the boxes).
        public var boxAgents: Set<String> = []
        /// Conditions (evaluation only, FusionService.Options): Gaussian noise on the other agents'
        /// poses in each agent's fusion (σ metres, σ degrees), and the other agents' latency: 0 or
        /// one frame period of the recording (their previous frame is fused, with its pose).
        public var poseNoise: (metres: Float, degrees: Float)?
        public var othersLatencyMs: Double = 0
        /// The server moves late messages' objects to the ego's time (``FusionService/Options/motionCompensation``).
        public var motionCompensation = true
        /// The server corrects other agents' placements from shared objects (``FusionService/Options/poseAlignment``).
        public var poseAlignment = false
        /// How the server merges boxes (nil: as the model file says).
        public var merge: BoxMerge?
        /// Each agent's single-agent AP (`AgentReport.singleAP`). With a map model that is a whole
        /// server pass per agent-frame, run in the agents' loop: a benchmark of the pipeline's own
        /// latency and capacity turns it off (a deep-fusion agent's own head costs nothing more).
        public var singleAgentBaseline = true
        /// Agents encode a frame concurrently (as independent agents do) where nothing is shared
        /// between them (no single-agent baseline, no boxes rung); else one after another.
        public var concurrentAgents = false
        public init(recording: String, model: String) {
            self.recording = recording
            self.model = model
        }
    }

    /// Per agent: what it sent and what came back.
    public struct AgentReport: Sendable {
        public var agent: String
        public var frames = 0
        public var results = 0
        public var bytes = 0
        public var fusedAP = AveragePrecision()
        public var singleAP = AveragePrecision()
        /// Fused AP@ split by how many agents see the object (index 0: one, 1: two or more) and
        /// by its distance from the agent (``rangeBins``).
        public var fusedBySeen = [AveragePrecision](repeating: AveragePrecision(), count: 2)
        public var fusedByRange = [AveragePrecision](repeating: AveragePrecision(), count: 3)
        public var edgeMs: [Double] = []  // featurize + encode + quantize (+ the detector, late fusion)
        public var wireMs: [Double] = []  // pack + LZ4 + envelope + CRC
        public var roundTripMs: [Double] = []  // submit → Result
        /// Detections per frame index, in the agent's frame.
        public var detections: [Int: [BEVBox]] = [:]
    }

    /// Distance bins of ``AgentReport/fusedByRange``, metres from the agent: [0, 15), [15, 30), [30, ∞).
    public static let rangeBins: [Float] = [0, 15, 30]

    public let config: Config
    public private(set) var reports: [String: AgentReport] = [:]
    /// Called after every fusion pass with its outputs (on the server's fusion task; keep it short).
    public var onFused: (@Sendable ([FusionService.Output], FeatureServer, FusionService) -> Void)?
    /// Wall time of each fusion pass, ms.
    public private(set) var fuseMs: [Double] = []
    /// CPU time of each fusion pass, summed over the fusion threads, ms (``FusionServer/passCPUTimes``).
    public private(set) var fuseCPUMs: [Double] = []
    /// Per stage of one agent's fusion (warp_fuse, head, nms, dequantize; prepare: per pass, deep fusion): p50 and p99, ms.
    public private(set) var stageMs: [String: (p50: Double, p99: Double)] = [:]
    /// Threads the server fused on (``Config/fusionThreads`` resolved).
    public private(set) var fusionThreads = 0
    /// The CPUs the server's fusion threads were pinned to (empty: not pinned).
    public private(set) var fusionCPUs: [Int] = []
    /// How the server merged boxes (``Config/merge`` resolved).
    public private(set) var merge: BoxMerge = .nms
    public private(set) var rejected = 0

    public init(_ config: Config) { self.config = config }

    /// What one agent's capture gave: bytes submitted (nil: not sent), its own detections, the
    /// time to encode and submit, to pack, its message's sequence and when it was submitted.
    struct AgentStep: Sendable {
        var bytes: Int?
        var alone: [BEVBox]
        var edgeMs: Double, wireMs: Double
        var sequence: UInt64, submittedNs: UInt64
    }

    public func run(logger: Logger, progress: (Int, Int) -> Void = { _, _ in }) async throws {
        let rec = try RecordingFrames(path: config.recording)
        let agents = config.agents ?? rec.agents
        let frames = Array(
            rec.frames.filter { f in agents.allSatisfy { f.agents[$0]?.points.isEmpty == false } }
                .dropFirst(config.firstFrame).prefix(config.maxFrames ?? .max))
        guard !frames.isEmpty else { throw PipelineError("\(config.recording) has no frame with every agent's LiDAR") }

        // Server, Curve on with fresh keys.
        let serverKeys = try CurveKeyPair.generate()
        var allow = CurveAllowList()
        var agentKeys: [String: CurveKeyPair] = [:]
        for a in agents {
            let k = try CurveKeyPair.generate()
            agentKeys[a] = k
            allow.names[k.publicKey] = a
        }
        let router = try RouterEndpoint(
            bind: "tcp://127.0.0.1:0", curve: CurveServer(keyPair: serverKeys, allowList: allow), logger: logger)
        var fopts = FusionService.Options()
        fopts.threads = config.fusionThreads
        fopts.fusion = config.fusion
        fopts.int8Backbone = !config.floatServer
        fopts.poseNoise = config.poseNoise
        fopts.merge = config.merge
        fopts.motionCompensation = config.motionCompensation
        fopts.poseAlignment = config.poseAlignment
        if config.othersLatencyMs != 0 {
            let periodMs = frames.count > 1 ? Double(frames[1].timeNs - frames[0].timeNs) / 1e6 : 0
            guard abs(config.othersLatencyMs - periodMs) <= 1 else {
                throw PipelineError(
                    "latency \(config.othersLatencyMs) ms: the other agents can be late by one frame of "
                        + "\(config.recording), \(periodMs) ms, or 0")
            }
            fopts.othersOneFrameLate = true
        }
        let fusion = try FusionService(modelFile: config.model, options: fopts)
        // The server fuses in lock-step: a pass when every agent's frame t is in.
        let fusionServer = FusionServer(
            endpoint: router, fusion: fusion, trigger: .allOf(Set(agents)), drainMs: 0, logger: logger)
        if let observer = onFused {
            fusionServer.observe { outs, s in observer(outs, s.server, fusion) }
        }
        let server = fusionServer.server
        let serverTask = Task { await fusionServer.run() }

        // Agents.
        let results = Locked<[String: [UInt64: (ResultMessage, UInt64)]]>([:])
        // Lock-step waits on this, not by polling: a waiter woken thousands of times a second
        // would preempt the fusion threads it waits for (measured: +12 % on a pass's wall time).
        let (resultArrivals, resultArrived) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        // One wake a second, so that the wait's deadline is checked even if no Result comes.
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(nanoseconds: 1_000_000_000)
                resultArrived.yield()
            }
        }
        defer { ticker.cancel() }
        var nextArrival = resultArrivals.makeAsyncIterator()
        var edge: [String: EdgeEncoder] = [:]
        var feature: [String: FeatureAgent] = [:]
        var tasks: [Task<Void, Never>] = []
        for a in agents {
            let e = try EdgeEncoder(modelFile: config.model)
            try e.setOperatingPoint(
                widthIndex: config.widthIndex ?? (e.model.architecture.widths.count - 1), bits: config.bits,
                threshold: config.threshold, codebook: config.codebook)
            e.floatEncoder = config.floatEncoder
            edge[a] = e
            let identity = AgentIdentity(
                agentID: a.replacingOccurrences(of: "_", with: "-").isEmpty ? a : a, modelID: e.modelID,
                widths: e.model.architecture.widths.map { UInt16(($0 * 1000).rounded()) }, bitsMask: e.bitsMask)
            let fa = try FeatureAgent(
                identity: identity, server: router.endpoint,
                curve: CurveClient(keyPair: agentKeys[a]!, serverKey: serverKeys.publicKey),
                maxFrameBytes: 1 << 20, logger: logger
            ) { r in
                let now = SystemClock.monotonicNs()
                results.withLock { $0[a, default: [:]][r.sequence] = (r, now) }
                resultArrived.yield()
            }
            feature[a] = fa
            tasks.append(Task { await fa.run() })
            reports[a] = AgentReport(agent: a)
        }
        // The single-agent baseline: the map model's server half with the agent alone, or a deep-fusion
        // agent's own head.
        let modelFile = try Safetensors(contentsOf: config.model)
        let single =
            try config.singleAgentBaseline && DeepArchitecture(modelFile) == nil
            ? try CooperativeDetector(modelFile, maxAgents: 1) : nil
        single?.useInt8 = !config.floatServer && single?.hasInt8 == true
        let own = config.lateFusion || !config.boxAgents.isEmpty ? try OwnDetector(modelFile: config.model) : nil
        own?.detector?.useInt8 = !config.floatServer && own?.detector?.hasInt8 == true
        let feat = FloatTensor(height: 32, width: 32, channels: 256)
        defer {
            for f in feature.values { f.endpoint.close() }
            router.close()
        }
        var pacer = Pacer(origin: 0)  // stamps: ns since the first frame, loops continuing the rhythm
        let span = frames.last!.timeNs - frames[0].timeNs
        let period = frames.count > 1 ? span / UInt64(frames.count - 1) : 100_000_000
        for loop in 0..<max(config.loops, 1) {
            for (fi, f) in frames.enumerated() {
                if config.realTime {
                    try await pacer.wait(for: UInt64(loop) * (span + period) + (f.timeNs - frames[0].timeNs))
                }
                // One agent's capture: encode and submit its message (or its boxes), and what it
                // detects alone.
                let step: @Sendable (String) -> AgentStep = { [config, edge, feature] a in
                    let af = f.agents[a]!
                    let e = edge[a]!
                    let fa = feature[a]!
                    let pose = af.measuredPose ?? af.pose!
                    let sensorHeight = Float((af.pose ?? pose).position.z)
                    let t0 = SystemClock.monotonicNs()
                    // Live (real time): the wall clock at capture, so that latency reads true; else the recording's clock.
                    let captureNs =
                        config.realTime
                        ? UInt64(Date().timeIntervalSince1970 * 1e9) : f.timeNs + UInt64(loop) * (span + period)
                    let n: Int?
                    let alone: [BEVBox]
                    var submittedNs: UInt64 = 0
                    if let own, config.lateFusion || config.boxAgents.contains(a) {
                        // The boxes rung: the agent's own detections are its message, and its baseline.
                        alone = af.points.withUnsafeBufferPointer { own.detect(e, $0, sensorHeight: sensorHeight) }
                        submittedNs = SystemClock.monotonicNs()  // before: its Result may beat the next line
                        n = fa.submit(
                            boxes: Boxes(
                                agentID: a, sequence: 0, captureTimeNs: captureNs, position: pose.position,
                                orientation: pose.orientation, detections: alone.map { Detection($0) }))
                    } else {
                        let shape = af.points.withUnsafeBufferPointer { e.encode($0, sensorHeight: sensorHeight) }
                        let h = FeatureFrameHeader(
                            agentID: a, sequence: 0, captureTimeNs: captureNs, position: pose.position,
                            orientation: pose.orientation,
                            modelID: e.modelID, widthIndex: UInt8(e.widthIndex), bits: e.frameQuantization.bits,
                            channels: shape.channels, height: shape.height, width: shape.width, quant: e.frameQuantization.quant,
                            masked: shape.masked, codec: config.lz4 ? .lz4 : .none)
                        submittedNs = SystemClock.monotonicNs()
                        n = e.dense.withUnsafeBufferPointer { d in
                            e.mask.withUnsafeBytes { m in fa.submit(h, dense: d, mask: shape.masked ? m : nil) }
                        }
                        // Single-agent baseline: the same features, fused with nobody.
                        if let single {
                            e.dequantized(
                                into: feat, channels: shape.channels, height: shape.height, width: shape.width,
                                masked: shape.masked)
                            alone = single.detect(
                                ego: 0,
                                agents: [CooperativeDetector.AgentInput(features: feat, position: .zero, yaw: 0)],
                                fusion: config.fusion)
                        } else {
                            alone = e.deep?.boxes() ?? []
                        }
                    }
                    return AgentStep(
                        bytes: n, alone: alone, edgeMs: Double(submittedNs - t0) / 1e6,
                        wireMs: fa.stats.lastPackSeconds * 1e3, sequence: fa.lastSequence, submittedNs: submittedNs)
                }
                // Independent agents capture at once: with nothing shared between them (no baseline
                // detector, no boxes rung) they encode concurrently, as on their own boards; else in turn.
                let steps = Locked<[String: AgentStep]>([:])
                if config.concurrentAgents && single == nil && own == nil {
                    DispatchQueue.concurrentPerform(iterations: agents.count) { k in
                        let r = step(agents[k])
                        steps.withLock { $0[agents[k]] = r }
                    }
                } else {
                    for a in agents {
                        let r = step(a)
                        steps.withLock { $0[a] = r }
                    }
                }
                var sent: [String: (seq: UInt64, t0: UInt64)] = [:]
                for (a, r) in steps.value {
                    reports[a]!.frames += 1
                    reports[a]!.bytes += r.bytes ?? 0
                    reports[a]!.edgeMs.append(r.edgeMs)
                    reports[a]!.wireMs.append(r.wireMs)
                    sent[a] = (r.sequence, r.submittedNs)
                    let gt = f.groundTruth(for: a)
                    reports[a]!.singleAP.add(
                        detections: Self.filter(r.alone, own: gt.own), groundTruth: gt.boxes)
                }
                // Wait for every agent's Result for this frame.
                // Lock-step: wait as long as the pass takes (a loaded machine, the portable
                // kernels); the bound only keeps a lost Result from hanging the session.
                let deadline = SystemClock.monotonicNs() + 60_000_000_000
                while SystemClock.monotonicNs() < deadline {
                    let got = results.value
                    if agents.allSatisfy({ got[$0]?[sent[$0]!.seq] != nil }) { break }
                    _ = await nextArrival.next()
                }
                let got = results.value
                for a in agents {
                    guard let (r, receivedAt) = got[a]?[sent[a]!.seq] else { continue }
                    reports[a]!.results += 1
                    reports[a]!.roundTripMs.append(Double(receivedAt - sent[a]!.t0) / 1e6)
                    let dets = r.detections.map(\.bevBox)
                    let gt = f.groundTruth(for: a)
                    reports[a]!.detections[fi] = dets
                    let kept = Self.filter(dets, own: gt.own)
                    let truth = gt.boxes
                    reports[a]!.fusedAP.add(detections: kept, groundTruth: truth)
                    for k in 0..<2 {
                        reports[a]!.fusedBySeen[k].add(
                            detections: kept, groundTruth: truth,
                            counted: gt.seenBy.map { ($0 >= 2 ? 1 : 0) == k },
                            unmatchedCounts: { _ in true })  // a false positive counts in both (as Waymo's levels)
                    }
                    func bin(_ x: Float, _ y: Float) -> Int {
                        Self.rangeBins.lastIndex { (x * x + y * y).squareRoot() >= $0 } ?? 0
                    }
                    for k in Self.rangeBins.indices {
                        reports[a]!.fusedByRange[k].add(
                            detections: kept, groundTruth: truth, counted: truth.map { bin($0.x, $0.y) == k },
                            unmatchedCounts: { bin($0.x, $0.y) == k })
                    }
                }
                progress(loop * frames.count + fi + 1, max(config.loops, 1) * frames.count)
            }
        }
        fuseMs = fusionServer.passDurations.map { $0 * 1e3 }
        fuseCPUMs = fusionServer.passCPUTimes.map { $0 * 1e3 }
        for (name, p50, p99) in fusion.metrics.stages { stageMs[name] = (p50 * 1e3, p99 * 1e3) }
        fusionThreads = fusion.threads
        fusionCPUs = fusionServer.fusionCPUs
        merge = fusion.merge
        rejected = server.rejections.values.reduce(0, +)
        for f in feature.values { f.endpoint.close() }
        fusionServer.shutdown()
        await serverTask.value
        for t in tasks { await t.value }
    }

    /// Drops detections outside the grid or inside the ego's own vehicle (+0.5 m), as
    /// training/evaluate.py does.
    public static func filter(_ dets: [BEVBox], own: [BEVBox], half: Float = 32) -> [BEVBox] {
        dets.filter { d in
            guard abs(d.x) < half, abs(d.y) < half else { return false }
            for o in own {
                let l = Pose2D(x: o.x, y: o.y, yaw: o.yaw).toLocal(SIMD2(d.x, d.y))
                if abs(l.x) < o.length / 2 + 0.5, abs(l.y) < o.width / 2 + 0.5 { return false }
            }
            return true
        }
    }
}

extension CooperativeSession.Config {
    /// A session of `model` sending `bits`, `threshold` and `payload` (scalar | codebook); what is
    /// nil comes from the model's recommended message (`EdgeEncoder.recommendedOperatingPoint`),
    /// except that `bits` alone asks for scalar codes.
    public init(recording: String, model: String, bits: Int?, threshold: Float?, payload: MessagePayload?) throws {
        self.init(recording: recording, model: model)
        let r = try EdgeEncoder.recommendedOperatingPoint(modelFile: model)
        self.bits = bits ?? r.bits
        self.threshold = threshold ?? r.threshold
        // --bits alone means scalar codes.
        self.codebook = payload.map { $0 == .codebook } ?? (bits == nil && r.codebook)
    }

    /// "codebook indices at threshold 0.2", "4-bit features, every cell", for a status line.
    public var messageDescription: String {
        (codebook ? "codebook indices" : "\(bits)-bit features") + (threshold > 0 ? " at threshold \(threshold)" : ", every cell")
    }
}

public struct PipelineError: Error, CustomStringConvertible {
    public let description: String
    public init(_ d: String) { description = d }
}
