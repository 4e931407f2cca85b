import Foundation
import Logging
import SlimCore
import SlimEngine
import SlimPerception
import SlimWire
import Synchronization

/// Fuses the agents' features and answers each agent with detections in its own frame.
///
/// `ingest` (called by `FeatureServer` for every accepted frame) dequantizes the frame into
/// the agent's slot; `tick` fuses, for every agent with a new frame, the newest frame of each
/// agent whose capture time lies within `window` of it, runs the server half of the model and
/// returns boxes in that agent's frame. Thread-safe: ingest and tick may run on different tasks,
/// and a tick holds the lock only to gather its inputs and to record its results, never while it
/// fuses: the receive path (`ingest`, then the Ack) does not wait for fusion. Each agent's slot is
/// double-buffered; the map a running tick reads is pinned, and a frame that arrives meanwhile is
/// dequantized into the other buffer.
public final class FusionService: @unchecked Sendable {
    public struct Options: Sendable {
        /// Frames captured further apart than this are not fused together.
        public var windowNs: UInt64 = 150_000_000
        /// Threads a tick fuses on (one agent each at a time; each thread has its own detector and
        /// buffers); 0: one per core. `slimsplit server` takes it from `fusion.threads`.
        public var threads = 1
        /// Fuse frames outside the window anyway, each with its own pose (they are still
        /// counted as late); by default they are left out.
        public var useLateFrames = false
        /// Run the server's backbone in int8 when the model has it (float otherwise).
        public var int8Backbone = true
        public var fusion: CooperativeDetector.Fusion = .attention
        public var boxHeight = Detection.vehicleHeight
        /// Evaluation only (`slimsplit eval --pose-noise`): Gaussian noise, σ metres per axis and
        /// σ degrees of yaw, added to every other agent's pose in each agent's fusion (the V2XSet
        /// convention; maps and boxes alike). Reproducible: drawn from the agents' names and the
        /// ego's sequence number.
        public var poseNoise: (metres: Float, degrees: Float)?
        /// Evaluation only (`slimsplit eval --latency-ms`): each agent's fusion takes the other
        /// agents' previous message (one frame old, with its pose), as if they arrived that late.
        public var othersOneFrameLate = false
        /// How boxes are merged (late fusion; a deep model's fused boxes); nil: as the model file
        /// says (`decode.merge`).
        public var merge: BoxMerge?
        /// Move what a late agent's message shows to the ego's capture time: each object by its
        /// speed (``MotionTracker``, from the agent's consecutive messages) times the age. Applies
        /// to the boxes rung and to deep-fusion maps (map fusion's maps carry no boxes to track).
        public var motionCompensation = true
        /// Correct where each other agent is placed in an ego's fusion from the objects both
        /// detect (``PoseAlignment``): its boxes (after motion compensation) fitted onto the ego's
        /// own. Applies to the boxes rung and to deep-fusion maps. Off by default: it pays only
        /// where positions are worse than the detectors agree (about 0.3 m; docs/evaluation.md).
        public var poseAlignment = false
        public init() {}
    }

    public struct Output: Sendable {
        public var agent: String
        public var sequence: UInt64
        public var captureTimeNs: UInt64
        public var fusedAgents: [String]
        public var boxes: [BEVBox]
        /// The agent's pose as its frame reported it (world frame): boxes are relative to it.
        public var position: SIMD2<Float>
        public var yaw: Float

        /// The boxes in the world frame: the agent's pose applied to centre and yaw.
        public var worldBoxes: [BEVBox] { boxes.map { $0.moved(from: position, yaw, to: .zero, 0) } }
    }

    struct Slot {
        var features: FloatTensor
        /// The buffer the next frame is dequantized into (nil while a tick reads it).
        var spare: FloatTensor?
        var position = SIMD2<Float>.zero
        var yaw: Float = 0
        var captureNs: UInt64 = 0
        var sequence: UInt64 = 0
        var fresh = false
        /// The agent's own detections (its frame) when its latest message was Boxes: it then
        /// joins fusions by late fusion, and `features` is not used.
        var boxes: [BEVBox]?
        /// The message before (only with `othersOneFrameLate`): a copy of its map or its boxes.
        var previous: Previous?

        /// A new message's numbering, time and pose (the BEV pose: x, y and the yaw of the quaternion).
        mutating func take(sequence: UInt64, captureNs: UInt64, position p: SIMD3<Double>, orientation q: SIMD4<Double>)
        {
            position = SIMD2(Float(p.x), Float(p.y))
            yaw = Float(Pose2D.yaw(ofQuaternion: q))
            self.captureNs = captureNs
            self.sequence = sequence
            fresh = true
        }
    }

    struct Previous {
        var features: FloatTensor
        var boxes: [BEVBox]?
        var position: SIMD2<Float>, yaw: Float, captureNs: UInt64
    }

    /// Keeps the slot's current message as `previous` (before a new one replaces it).
    private func keepPrevious(_ slot: inout Slot, _ state: inout State) {
        guard options.othersOneFrameLate, slot.sequence > 0 else { return }
        var buffer = slot.previous?.features
        if let b = buffer, state.pinned[ObjectIdentifier(b)] != nil { buffer = nil }  // a tick reads it
        let copy = buffer ?? FloatTensor(height: detector.height, width: detector.width, channels: maxChannels)
        if slot.boxes == nil {
            copy.reshape(height: slot.features.height, width: slot.features.width, channels: slot.features.channels)
            _ = copy.values.update(fromContentsOf: slot.features.values)
            state.wrote(copy)
        }
        slot.previous = Previous(
            features: copy, boxes: slot.boxes, position: slot.position, yaw: slot.yaw, captureNs: slot.captureNs)
    }

    public let options: Options
    let detectors: [any FusionDetector]  // one per worker thread
    /// Threads a tick fuses on (``Options/threads``).
    public var threads: Int { detectors.count }
    /// How the detectors merge boxes (``Options/merge``, else the model file's).
    public var merge: BoxMerge { detectors[0].merge }
    private var detector: any FusionDetector { detectors[0] }
    private let quantization: [QuantKey: FeatureQuantization]
    /// Residual codebooks per width index (codebook frames, quant_mode 2).
    private let codebooks: [Int: FeatureCodebook]
    /// What ingest and tick share, behind one lock.
    private struct State {
        var slots: [String: Slot] = [:]
        /// Maps a running tick reads (by identity, with a count): ingest never writes into them.
        var pinned: [ObjectIdentifier: Int] = [:]
        /// Each map's content version (by identity): a new number whenever ingest writes into it,
        /// so that a detector can keep what it computed from a map no frame has changed since.
        var versions: [ObjectIdentifier: UInt64] = [:]
        var lastVersion: UInt64 = 0  // versions start at 1; the empty map's is 0

        mutating func wrote(_ t: FloatTensor) {
            lastVersion += 1
            versions[ObjectIdentifier(t)] = lastVersion
            if versions.count > 64 + 4 * slots.count {  // forget maps no slot holds any more
                var live = Set<ObjectIdentifier>([ObjectIdentifier(t)])
                for slot in slots.values {
                    for m in [slot.features, slot.spare, slot.previous?.features] {
                        if let m { live.insert(ObjectIdentifier(m)) }
                    }
                }
                versions = versions.filter { live.contains($0.key) || pinned[$0.key] != nil }
            }
        }
        /// Frames left out of a fusion because they were outside the window.
        var dropped = 0
        /// Frames not taken because their agent's slot already holds that sequence number or a
        /// later one (a frame resent, or sent again by an agent that moved back): never fused twice.
        var duplicates = 0
        /// Outputs for an (agent, sequence) already fused: counted to prove it stays 0.
        var fusedTwice = 0
        /// Boxes messages taken (the agents on the boxes rung).
        var boxesTaken = 0
        var lastFused: [String: UInt64] = [:]
        var durations = [Double](repeating: 0, count: 512)  // ring of per-agent fusion times (s)
        var durationCount = 0, durationSum = 0.0, resultCount = 0
        /// Per stage (decode, warp_fuse, head, nms; prepare, per pass of a deep-fusion model; motion,
        /// per pass with motion compensation): recent durations in seconds.
        var stageTimes: [String: [Double]] = [:]
        /// Each agent's objects from message to message (``Options/motionCompensation``).
        var tracker = MotionTracker()
        /// Other agents' placements corrected by ``Options/poseAlignment``.
        var aligned = 0

        mutating func addStage(_ name: String, _ s: Double) {
            var v = stageTimes[name] ?? []
            if v.count >= 512 { v.removeFirst(v.count - 511) }
            v.append(s)
            stageTimes[name] = v
        }
    }
    private let state = Mutex(State())
    /// Called by `tick` between gathering its inputs and fusing them, without the lock held (tests
    /// hold a pass there to show that ingest does not wait for it).
    nonisolated(unsafe) var beforeFusing: (@Sendable () -> Void)?
    /// Channels of a slot's map: the transmitted channels, and with deep fusion one more, the
    /// sent flag of each cell (1 where the frame's mask has it).
    private let maxChannels: Int
    /// Channels a frame may carry at most.
    private let mapChannels: Int
    /// The model's empty-cell features at full width: the map of an ego on the boxes rung.
    private let emptyMap: FloatTensor
    /// Frames left out of a fusion because they were outside the window.
    public var dropped: Int { state.withLock { $0.dropped } }
    /// Frames not taken because their agent's slot already held that sequence number or a later one.
    public var duplicates: Int { state.withLock { $0.duplicates } }
    /// Outputs for an (agent, sequence) already fused (should stay 0).
    public var fusedTwice: Int { state.withLock { $0.fusedTwice } }

    /// Counters and recent fusion durations, for the metrics endpoint.
    public struct Metrics: Sendable {
        public var results: Int, late: Int, count: Int, sum: Double
        public var duplicates: Int, fusedTwice: Int
        /// Other agents' placements corrected by pose alignment.
        public var poseAlignments: Int
        public var quantiles: [(String, Double)]
        /// Stage → (p50, p99) seconds.
        public var stages: [(String, Double, Double)]
    }

    public var metrics: Metrics { state.withLock { Self.metrics($0) } }

    private static func metrics(_ s: borrowing State) -> Metrics {
        let (durations, durationCount, stageTimes) = (s.durations, s.durationCount, s.stageTimes)
        let recent = Array(durations.prefix(min(durationCount, durations.count))).sorted()
        func q(_ p: Double) -> Double {
            recent.isEmpty ? 0 : recent[min(recent.count - 1, Int(p * Double(recent.count)))]
        }
        let stages = stageTimes.keys.sorted().map { k -> (String, Double, Double) in
            let v = stageTimes[k]!.sorted()
            return (k, v[min(v.count - 1, v.count / 2)], v[min(v.count - 1, Int(0.99 * Double(v.count)))])
        }
        return Metrics(
            results: s.resultCount, late: s.dropped, count: durationCount, sum: s.durationSum,
            duplicates: s.duplicates, fusedTwice: s.fusedTwice, poseAlignments: s.aligned,
            quantiles: [("0.5", q(0.5)), ("0.9", q(0.9)), ("0.99", q(0.99))], stages: stages)
    }

    public init(modelFile: String, options: Options = Options()) throws {
        let st = try Safetensors(contentsOf: modelFile)
        let threads = options.threads > 0 ? options.threads : ProcessInfo.processInfo.activeProcessorCount
        detectors = try makeFusionDetectors(st, count: threads)
        for case let d as CooperativeDetector in detectors { d.useInt8 = options.int8Backbone && d.hasInt8 }
        if let m = options.merge { for d in detectors { d.merge = m } }
        quantization = try FeatureQuantization.all(in: st)
        codebooks = try FeatureCodebook.all(in: st)
        let d = detectors[0]
        maxChannels = d.inputChannels
        mapChannels = d is DeepFusionDetector ? d.inputChannels - 1 : d.inputChannels
        // An ego on the boxes rung fuses from an empty map at its pose: the model's empty-cell
        // features (a deep-fusion map: nothing sent).
        emptyMap = FloatTensor(height: d.height, width: d.width, channels: maxChannels)
        let slotChannels = d.inputChannels
        let full = quantization.filter { $0.value.scale.count == slotChannels && $0.value.empty != nil }
            .max { ($0.key.widthIndex, $0.key.bits) < ($1.key.widthIndex, $1.key.bits) }
        for cell in 0..<(d.height * d.width) {
            for ch in 0..<slotChannels { emptyMap.storage[cell * slotChannels + ch] = full?.value.empty?[ch] ?? 0 }
        }
        rateAccuracy = try RateAccuracyEntry.table(in: st, quantization: quantization)
        self.options = options
    }

    /// Whether a frame fits the model's transmitted map (C×H×W, and quantization parameters for
    /// its width and bit depth); the server rejects it before the Ack otherwise.
    public func check(_ h: FeatureFrameHeader) -> WireError? {
        guard h.height == detector.height, h.width == detector.width else {
            return WireError(
                .modelMismatch,
                "frame is \(h.height)×\(h.width) cells, the model fuses \(detector.height)×\(detector.width)")
        }
        if case .codebook = h.quant {
            // C is the number of levels; each cell decodes to the codebook's dimension.
            guard let book = codebooks[Int(h.widthIndex)] else {
                return WireError(.modelMismatch, "the model has no codebook for width index \(h.widthIndex)")
            }
            guard h.channels == book.levels, Int(h.bits) == book.bits, book.dim <= mapChannels else {
                return WireError(
                    .modelMismatch,
                    "a codebook frame of \(h.channels) levels of \(h.bits)-bit indices; the model's codebook has \(book.levels) of \(book.bits) bits"
                )
            }
            return nil
        }
        guard h.channels <= mapChannels else {
            return WireError(.modelMismatch, "frame has \(h.channels) channels, the model's map at most \(mapChannels)")
        }
        if case .model = h.quant {
            guard let q = quantization[QuantKey(widthIndex: Int(h.widthIndex), bits: Int(h.bits))] else {
                return WireError(
                    .modelMismatch, "the model has no quantization for width index \(h.widthIndex) at \(h.bits) bits")
            }
            guard q.scale.count == h.channels else {
                return WireError(
                    .modelMismatch,
                    "width index \(h.widthIndex) sends \(q.scale.count) channels, the frame has \(h.channels)")
            }
        }
        return nil
    }

    /// Dequantizes an accepted frame into its agent's slot. Rejects (returns false) frames whose
    /// shape does not match the model's transmitted map.
    @discardableResult
    public func ingest(agent: String, _ f: FeatureFrameDecoder.Decoded) -> Bool {
        let t0 = SystemClock.monotonicSeconds()
        defer {
            let dt = SystemClock.monotonicSeconds() - t0
            state.withLock { $0.addStage("dequantize", dt) }
        }
        let h = f.header
        guard h.height == detector.height, h.width == detector.width, check(h) == nil else { return false }
        let duplicate = state.withLock { s in
            guard let slot = s.slots[agent], slot.sequence >= h.sequence else { return false }
            s.duplicates += 1
            return true
        }
        if duplicate { return false }
        var params: (scale: [Float], zp: [Float]) = ([], [])
        var empty: [Float]?
        var book: FeatureCodebook?
        switch h.quant {
        case .inline(let s, let z): params = (s, z.map(Float.init))
        case .model:
            guard let q = quantization[QuantKey(widthIndex: Int(h.widthIndex), bits: Int(h.bits))],
                q.scale.count == h.channels
            else { return false }
            params = (q.scale, q.zeroPoint)
            empty = q.empty
        case .codebook:
            book = codebooks[Int(h.widthIndex)]  // checked above
        }
        // Take a buffer no tick is reading (under the lock), fill it without the lock.
        let buffer = state.withLock { s -> FloatTensor? in
            guard let spare = s.slots[agent]?.spare, s.pinned[ObjectIdentifier(spare)] == nil else { return nil }
            s.slots[agent]!.spare = nil
            return spare
        }
        let target = buffer ?? FloatTensor(height: detector.height, width: detector.width, channels: maxChannels)
        let c = book?.dim ?? h.channels
        let cells = h.cells
        // Deep fusion: one more channel per cell, 1 where the frame sent it.
        let flag = mapChannels < maxChannels
        let stride = flag ? c + 1 : c
        target.reshape(height: h.height, width: h.width, channels: stride)
        let dst = target.pointer
        // Values are channel-major over the sent cells (k-th sent cell); unsent cells are 0.
        let k = f.sentCells
        if let book {
            // Codebook: the values are level-major indices; a sent cell is the sum of its codewords.
            var n = 0
            for cell in 0..<cells {
                let on = f.mask.map { CellMask.contains($0, cell) } ?? true
                let v = dst + cell * stride
                for ch in 0..<c { v[ch] = 0 }
                if on {
                    for l in 0..<book.levels { book.add(level: l, index: Int(f.values[l * k + n]), to: v) }
                    n += 1
                }
                if flag { v[c] = on ? 1 : 0 }
            }
        } else if let m = f.mask {
            // Cells left out take the model's empty-cell value (PROTOCOL.md §4.2), else 0.
            var n = 0
            for cell in 0..<cells {
                let on = CellMask.contains(m, cell)
                if on {
                    for ch in 0..<c {
                        dst[cell * stride + ch] = (Float(f.values[ch * k + n]) - params.zp[ch]) * params.scale[ch]
                    }
                    n += 1
                } else if let empty {
                    for ch in 0..<c { dst[cell * stride + ch] = empty[ch] }
                } else {
                    for ch in 0..<c { dst[cell * stride + ch] = 0 }
                }
                if flag { dst[cell * stride + c] = on ? 1 : 0 }
            }
        } else {
            for ch in 0..<c {
                let s = params.scale[ch]
                let z = params.zp[ch]
                for cell in 0..<cells { dst[cell * stride + ch] = (Float(f.values[ch * cells + cell]) - z) * s }
            }
            if flag { for cell in 0..<cells { dst[cell * stride + c] = 1 } }
        }
        state.withLock { s in
            var slot = s.slots[agent] ?? Slot(features: target)
            keepPrevious(&slot, &s)
            if slot.features !== target {
                slot.spare = slot.features  // ingest checks it is not pinned before reuse
                slot.features = target
            }
            s.wrote(target)
            slot.boxes = nil
            slot.take(
                sequence: h.sequence, captureNs: h.captureTimeNs, position: h.position, orientation: h.orientation)
            s.slots[agent] = slot
        }
        return true
    }

    /// Takes an agent's own detections (a Boxes message) into its slot: until its next
    /// FeatureFrame it joins fusions by late fusion. False for a sequence already taken.
    @discardableResult
    public func ingest(agent: String, boxes m: Boxes) -> Bool {
        let boxes = m.detections.map(\.bevBox)
        return state.withLock { s in
            if let slot = s.slots[agent], slot.sequence >= m.sequence {
                s.duplicates += 1
                return false
            }
            var slot =
                s.slots[agent]
                ?? Slot(features: FloatTensor(height: detector.height, width: detector.width, channels: maxChannels))
            keepPrevious(&slot, &s)
            slot.boxes = boxes
            slot.take(
                sequence: m.sequence, captureNs: m.captureTimeNs, position: m.position, orientation: m.orientation)
            s.slots[agent] = slot
            s.boxesTaken += 1
            return true
        }
    }

    /// Boxes messages taken (the agents on the boxes rung).
    public var boxesTaken: Int { state.withLock { $0.boxesTaken } }

    /// An agent opened a new session (Hello): its numbering may start again (a restarted agent).
    public func joined(agent: String) {
        state.withLock { s in
            s.slots[agent]?.sequence = 0
            s.lastFused[agent] = nil
            s.tracker.forget(agent: agent)
        }
    }

    /// Each agent's latest reported pose and the capture time of its latest frame.
    public var agentPoses: [(agent: String, position: SIMD2<Float>, yaw: Float, captureNs: UInt64)] {
        state.withLock { s in
            s.slots.map { ($0.key, $0.value.position, $0.value.yaw, $0.value.captureNs) }.sorted {
                $0.agent < $1.agent
            }
        }
    }

    /// The fusion grid: half extent and cell size, metres.
    public var halfExtent: Float { detector.halfExtent }
    public var cell: Float { detector.cell }

    /// The model's rate–accuracy table, if it has one.
    public let rateAccuracy: [RateAccuracyEntry]?

    /// Agents with a frame newer than their last fusion.
    public var pending: [String] {
        state.withLock { $0.slots.filter(\.value.fresh).map(\.key).sorted() }
    }

    /// Fuses for every agent with a new frame (or for `only`). The inputs are gathered and their
    /// maps pinned under the lock; the fusion itself runs without it.
    public func tick(
        only: [String]? = nil,
        parallel: (_ n: Int, _ body: @escaping @Sendable (Int) -> Void) -> Void = {
            DispatchQueue.concurrentPerform(iterations: $0, execute: $1)
        }
    ) -> [Output] {
        var jobs = state.withLock { s in gather(only: only, &s) }
        beforeFusing?()
        // Fuse in parallel, each worker with its own detector.
        let results = Locked<[Int: ([BEVBox], Double, (Double, Double, Double))]>([:])
        let workers = min(detectors.count, jobs.count)
        let fusionMode = options.fusion
        let dets = detectors
        if workers > 0, dets[0] is DeepFusionDetector {
            // The per-agent work every ego reuses, once per agent, spread over the workers.
            // What a detector computed from a map in an earlier pass stays valid while its version does.
            var seen = Set<ObjectIdentifier>()
            let maps = jobs.flatMap { $0.inputs.map(\.features) }.filter { seen.insert(ObjectIdentifier($0)).inserted }
            let empty = emptyMap  // never written after init: version 0
            let versions = state.withLock { s in maps.map { $0 === empty ? 0 : s.versions[ObjectIdentifier($0)] } }
            dets[0].beginPass(Array(zip(maps, versions)))
            let tp = SystemClock.monotonicSeconds()
            parallel(workers) { w in dets[w].preparePass(worker: w, workers: workers) }
            let dt = SystemClock.monotonicSeconds() - tp
            state.withLock { $0.addStage("prepare", dt) }
        }
        if options.motionCompensation, workers > 0 {
            let tm = SystemClock.monotonicSeconds()
            compensateMotion(&jobs, dets[0])
            let dt = SystemClock.monotonicSeconds() - tm
            state.withLock { $0.addStage("motion", dt) }
        }
        if options.poseAlignment, workers > 0 {
            let ta = SystemClock.monotonicSeconds()
            let n = alignPoses(&jobs, dets[0])
            let dt = SystemClock.monotonicSeconds() - ta
            state.withLock {
                $0.addStage("align", dt)
                $0.aligned += n
            }
        }
        let jobsCopy = jobs
        if workers > 0 {
            // Egos are claimed one at a time: a worker that starts late or runs slower (a CPU
            // shared with other work) takes fewer of them.
            let next = Mutex(0)
            parallel(workers) { w in
                while true {
                    let k = next.withLock { n in
                        defer { n += 1 }
                        return n
                    }
                    guard k < jobsCopy.count else { return }
                    let j = jobsCopy[k]
                    let t0 = SystemClock.monotonicSeconds()
                    var boxes = j.egoIndex.map { dets[w].detect(ego: $0, agents: j.inputs, fusion: fusionMode) } ?? []
                    var st: (Double, Double, Double) = j.egoIndex == nil ? (0, 0, 0) : dets[w].lastStageSeconds
                    if !j.late.isEmpty {
                        // Late fusion: every boxes agent's detections in the ego's frame, within
                        // its grid, with what the maps gave; merged as the model says (NMS, or
                        // NMS and weighted means).
                        let t1 = SystemClock.monotonicSeconds()
                        let half = dets[w].halfExtent
                        for l in j.late {
                            for b in l.boxes {
                                let m = b.moved(from: l.position, l.yaw, to: j.slot.position, j.slot.yaw)
                                if abs(m.x) <= half, abs(m.y) <= half { boxes.append(m) }
                            }
                        }
                        boxes = dets[w].merge.merge(boxes, nmsIoU: dets[w].nmsIoU)
                        st.2 += SystemClock.monotonicSeconds() - t1
                    }
                    let dt = SystemClock.monotonicSeconds() - t0
                    results.withLock { $0[k] = (boxes, dt, (st.0, st.1, st.2)) }
                }
            }
        }
        let done = results.value
        return state.withLock { s in
            for j in jobs {
                for i in j.inputs {
                    let id = ObjectIdentifier(i.features)
                    s.pinned[id] = s.pinned[id].map { $0 > 1 ? $0 - 1 : nil } ?? nil
                }
            }
            var outputs: [Output] = []
            for (k, j) in jobs.enumerated() {
                guard let (boxes, dt, st) = done[k] else { continue }
                s.addStage("warp_fuse", st.0)
                s.addStage("head", st.1)
                s.addStage("nms", st.2)
                s.durations[s.durationCount % s.durations.count] = dt
                s.durationCount += 1
                s.durationSum += dt
                s.resultCount += 1
                let e = j.slot
                if let last = s.lastFused[j.ego], e.sequence <= last { s.fusedTwice += 1 }
                s.lastFused[j.ego] = e.sequence
                outputs.append(
                    Output(
                        agent: j.ego, sequence: e.sequence, captureTimeNs: e.captureNs, fusedAgents: j.names,
                        boxes: boxes, position: e.position, yaw: e.yaw))
            }
            return outputs
        }
    }

    private struct Job: @unchecked Sendable {
        var ego: String
        var slot: Slot
        var names: [String]
        /// The maps fused (the ego's first when it sent a map; an empty map at its pose when it
        /// sent boxes), and the ego's index among them (nil: no map to fuse).
        var inputs: [CooperativeDetector.AgentInput]
        /// The message behind each input (nil for the empty map).
        var sources: [Source?]
        var egoIndex: Int?
        /// Agents on the boxes rung: their detections and poses, merged by late fusion.
        var late: [(boxes: [BEVBox], position: SIMD2<Float>, yaw: Float, source: Source)]
    }

    /// Whose message an input is, when it was captured and the pose its agent sent (without the
    /// evaluation's noise): what the motion tracker needs.
    private struct Source {
        var agent: String, captureNs: UInt64, position: SIMD2<Float>, yaw: Float
    }

    /// Each job's inputs moved to the ego's capture time (``Options/motionCompensation``): every
    /// message's own boxes (a deep map's, as the detector reads them after its prepare; a boxes
    /// agent's) go through the tracker once, which gives each object its shift over the time
    /// between that message's capture and the ego's (signed: a message newer than the ego's frame
    /// is moved back); a boxes agent's boxes are moved by it, a map carries it to the detector.
    private func compensateMotion(_ jobs: inout [Job], _ detector: any FusionDetector) {
        let own = jobs.map { j in j.inputs.indices.map { j.sources[$0] == nil ? nil : detector.ownBoxes(of: j.inputs[$0].features) } }
        func offset(_ ego: UInt64, _ src: UInt64) -> Float {
            ego >= src ? Float(ego - src) / 1e9 : -Float(src - ego) / 1e9
        }
        state.withLock { s in
            for k in jobs.indices {
                let egoNs = jobs[k].slot.captureNs
                for n in jobs[k].inputs.indices {
                    guard let src = jobs[k].sources[n], let boxes = own[k][n] else { continue }
                    jobs[k].inputs[n].motion = s.tracker.motions(
                        agent: src.agent, captureNs: src.captureNs, position: src.position, yaw: src.yaw, boxes: boxes,
                        age: offset(egoNs, src.captureNs))
                }
                for n in jobs[k].late.indices {
                    let l = jobs[k].late[n]
                    jobs[k].late[n].boxes = s.tracker.motions(
                        agent: l.source.agent, captureNs: l.source.captureNs, position: l.source.position,
                        yaw: l.source.yaw, boxes: l.boxes, age: offset(egoNs, l.source.captureNs)
                    ).map(\.now)
                }
            }
        }
    }

    /// Each job's other agents placed where their boxes meet the ego's own (``Options/poseAlignment``):
    /// a map's boxes (moved by its motion, if any) or a boxes agent's, in the ego's frame by the
    /// pose it is placed with, fitted onto the ego's boxes; a fit corrects that pose. Returns the
    /// placements corrected.
    private func alignPoses(_ jobs: inout [Job], _ detector: any FusionDetector) -> Int {
        let aligner = PoseAlignment()
        var corrected = 0
        for k in jobs.indices {
            let e = jobs[k].slot
            func boxes(_ n: Int) -> [BEVBox]? {
                guard jobs[k].sources[n] != nil else { return nil }
                if let m = jobs[k].inputs[n].motion { return m.map(\.now) }
                return detector.ownBoxes(of: jobs[k].inputs[n].features)
            }
            // The ego's own boxes: from its map, or its Boxes message.
            let ours: [BEVBox]
            if let i = jobs[k].egoIndex, let b = boxes(i) {
                ours = b
            } else if let l = jobs[k].late.first(where: { $0.source.agent == jobs[k].ego }) {
                ours = l.boxes
            } else {
                continue
            }
            for n in jobs[k].inputs.indices where n != jobs[k].egoIndex {
                guard let theirs = boxes(n) else { continue }
                let a = jobs[k].inputs[n]
                let inEgo = theirs.map { $0.moved(from: a.position, a.yaw, to: e.position, e.yaw) }
                guard let c = aligner.correction(ours: ours, theirs: inEgo) else { continue }
                jobs[k].inputs[n].position = Self.shifted(a.position, by: c.shift, ego: e)
                corrected += 1
            }
            for n in jobs[k].late.indices where jobs[k].late[n].source.agent != jobs[k].ego {
                let l = jobs[k].late[n]
                let inEgo = l.boxes.map { $0.moved(from: l.position, l.yaw, to: e.position, e.yaw) }
                guard let c = aligner.correction(ours: ours, theirs: inEgo) else { continue }
                jobs[k].late[n].position = Self.shifted(l.position, by: c.shift, ego: e)
                corrected += 1
            }
        }
        return corrected
    }

    /// A world position moved by `shift`, given in the ego's frame.
    private static func shifted(_ p: SIMD2<Float>, by shift: SIMD2<Float>, ego e: Slot) -> SIMD2<Float> {
        p + Pose2D(.zero, yaw: e.yaw).toCommon(shift)
    }

    /// Under the lock: what each fresh ego's fusion reads, with its maps pinned.
    private func gather(only: [String]?, _ state: inout State) -> [Job] {
        var jobs: [Job] = []
        for ego in (only ?? state.slots.filter(\.value.fresh).map(\.key)).sorted() {
            guard let e = state.slots[ego] else { continue }
            // What each agent contributes: its latest message (its previous one for the others
            // with othersOneFrameLate), its pose (with the evaluation's noise for the others).
            var view:
                [String: (
                    features: FloatTensor, boxes: [BEVBox]?, position: SIMD2<Float>, yaw: Float, captureNs: UInt64
                )] =
                    [:]
            var sent: [String: Source] = [:]
            for (n, slot) in state.slots {
                if n == ego || !options.othersOneFrameLate {
                    view[n] = (slot.features, slot.boxes, slot.position, slot.yaw, slot.captureNs)
                } else if let p = slot.previous {
                    view[n] = (p.features, p.boxes, p.position, p.yaw, p.captureNs)
                }
                if let v = view[n] { sent[n] = Source(agent: n, captureNs: v.captureNs, position: v.position, yaw: v.yaw) }
                if n != ego, let noise = options.poseNoise, var v = view[n] {
                    var rng = NoiseSource(ego, n, e.sequence)
                    v.position += SIMD2(rng.gaussian(), rng.gaussian()) * noise.metres
                    v.yaw += rng.gaussian() * noise.degrees * .pi / 180
                    view[n] = v
                }
            }
            let names = view.keys.sorted().filter { n in
                let captureNs = view[n]!.captureNs
                let dt = captureNs > e.captureNs ? captureNs - e.captureNs : e.captureNs - captureNs
                if dt > options.windowNs, n != ego {
                    state.dropped += 1
                    return options.useLateFrames
                }
                return true
            }
            var inputs: [CooperativeDetector.AgentInput] = []
            var sources: [Source?] = []
            var late: [(boxes: [BEVBox], position: SIMD2<Float>, yaw: Float, source: Source)] = []
            for n in names {
                guard let s = view[n], let source = sent[n] else { continue }
                let age = s.captureNs < e.captureNs ? Float(e.captureNs - s.captureNs) / 1e9 : 0
                if let b = s.boxes {
                    late.append((b, s.position, s.yaw, source))
                } else {
                    inputs.append(.init(features: s.features, position: s.position, yaw: s.yaw, age: age))
                    sources.append(source)
                }
            }
            var egoIndex = names.filter { view[$0]!.boxes == nil }.firstIndex(of: ego)
            if egoIndex == nil, !inputs.isEmpty {
                inputs.insert(.init(features: emptyMap, position: e.position, yaw: e.yaw), at: 0)
                sources.insert(nil, at: 0)
                egoIndex = 0
            }
            for i in inputs { state.pinned[ObjectIdentifier(i.features), default: 0] += 1 }
            jobs.append(
                Job(ego: ego, slot: e, names: names, inputs: inputs, sources: sources, egoIndex: egoIndex, late: late))
            state.slots[ego]!.fresh = false  // a frame that arrives during the pass marks it fresh again
        }
        return jobs
    }

    /// A Result message for an output (boxes in the agent's frame).
    public func result(_ o: Output, fusionTimeNs: UInt64) -> ResultMessage {
        ResultMessage(
            sequence: o.sequence, captureTimeNs: o.captureTimeNs, fusionTimeNs: fusionTimeNs,
            detections: o.boxes.prefix(4096).map { Detection($0, height: options.boxHeight) })
    }
}

/// Reproducible Gaussian draws for the evaluation's pose noise: SplitMix64 seeded by FNV-1a of the
/// ego's and the other agent's names and the ego's sequence number, Box–Muller.
struct NoiseSource {
    private var state: UInt64

    init(_ ego: String, _ other: String, _ sequence: UInt64) {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in ego.utf8 + [0] + other.utf8 {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        state = h ^ (sequence &* 0x9e37_79b9_7f4a_7c15)
    }

    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    /// A standard normal draw.
    mutating func gaussian() -> Float {
        let u1 = (Double(next() >> 11) + 1) / 0x1p53  // (0, 1]
        let u2 = Double(next() >> 11) / 9_007_199_254_740_992
        return Float((-2 * log(u1)).squareRoot() * cos(2 * .pi * u2))
    }
}
