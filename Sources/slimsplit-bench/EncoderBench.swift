import ArgumentParser
import CAllocCounter
import Foundation
import SlimEngine
import SlimPerception
import SlimPipeline
import SlimSensors
import SlimCore

/// The edge encoder at every width, float and int8, one thread, on every kernel path asked for.
struct EncoderBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encoder",
        abstract:
            "Latency of the slimmable encoder at each width, float and int8, one thread, per kernel path and input kind.",
        discussion: """
            Inputs: `sim`, the BEV grids of every agent and frame of a simulator recording (clustered
            occupancy, mostly empty cells, as a LiDAR gives); `random`, a grid with `--occupancy` of its
            cells occupied uniformly at random (with --dense: every cell computed, as a dense engine does).
            Benchmarks/peers.py runs the same model in ONNX Runtime (and PyTorch where installed) in the
            same run and prints the ratios.
            """)

    @Option(help: "Model file (safetensors, docs/model-format.md).")
    var model: String = "Models/slimsplit-bev.safetensors"

    @Option(
        help:
            "Kernel path: best, all (every path this CPU runs), or one of \(KernelPath.all.map(\.name).joined(separator: ", "))."
    )
    var kernels: String = "best"

    @Option(help: "Input: sim, random or both.")
    var input: String = "both"

    @Option(help: "Recording whose LiDAR sweeps make the `sim` input.")
    var recording: String = "Tests/Fixtures/sample.mcap"

    @Option(help: "Timed runs per configuration.")
    var runs: Int = 200

    @Option(help: "Fraction of occupied cells of the `random` input.")
    var occupancy: Double = 0.15

    @Flag(help: "Compute every cell (no sparse skipping).")
    var dense = false

    @Flag(help: "Time int8 only.")
    var int8Only = false

    @Flag(help: "Print JSON only.")
    var json = false

    func validate() throws {
        guard ["sim", "random", "both"].contains(input) else {
            throw ValidationError("--input: sim, random or both, not '\(input)'")
        }
        guard runs > 0 else { throw ValidationError("--runs must be positive") }
    }

    func run() throws {
        let paths: [KernelPath]
        switch kernels {
        case "all": paths = KernelPath.supported
        case "best": paths = [try KernelPath.configure(nil)]
        default: paths = [try KernelPath.configure(kernels)]
        }
        let st = try Safetensors(contentsOf: model)
        let m = try SlimmableModel(st)
        let c = m.architecture.input.channels
        let h = m.architecture.input.height
        let w = m.architecture.input.width
        var inputs: [(String, [FloatTensor])] = []
        if input != "random" { inputs.append(("sim", try simInputs(channels: c, height: h, width: w))) }
        if input != "sim" { inputs.append(("random", [randomInput(channels: c, height: h, width: w)])) }
        let encoder = SlimmableEncoder(model: m, inputHeight: h, inputWidth: w)
        encoder.sparse = !dense
        // A deep-fusion model's agent runs more than the encoder: its int8 backbone, its own head
        // and the message's compression, timed as one ("agent_int8", full width), as an agent runs
        // them and as Models/slimsplit-deep-agent-int8.onnx has them for ONNX Runtime.
        let deep = try DeepArchitecture(st).map { spec throws in try DeepAgentStage(st, spec: spec) }
        if let deep, !(deep.hasInt8 && deep.inputQuant == encoder.outputQuant) {
            throw ValidationError("\(model): the deep-fusion agent's int8 backbone does not read the encoder's codes")
        }
        let hot = FloatTensor(height: h, width: w, channels: c)
        var runsDoc: [[String: Any]] = []
        for path in paths {
            encoder.kernels = path
            for (kind, frames) in inputs {
                var results: [[String: Any]] = []
                for wi in m.architecture.widths.indices {
                    encoder.widthIndex = wi
                    var entry: [String: Any] = [
                        "width": m.architecture.widths[wi], "width_index": wi,
                        "output_channels": encoder.outputChannels,
                    ]
                    // Each run takes the next frame, copied first (untimed) into one input buffer: as
                    // in an agent, where the featurizer has just written the grid, it is in cache.
                    var k = 0
                    let next = {
                        _ = hot.values.update(fromContentsOf: UnsafeBufferPointer(frames[k % frames.count].values))
                        k += 1
                    }
                    if !int8Only { entry["float"] = measure(next) { _ = encoder.runFloat(hot) } }
                    if m.int8 != nil { entry["int8"] = measure(next) { _ = encoder.runInt8(hot) } }
                    if let deep, wi == m.architecture.widths.count - 1 {
                        deep.kernels = path
                        entry["agent_int8"] = measure(next) {
                            deep.run(quantized: encoder.runInt8(hot), threshold: 0)
                        }
                    }
                    results.append(entry)
                    if !json {
                        let f = (entry["float"] as? [String: Any])?["p50_ms"].map { "\($0)" } ?? "-"
                        let q = (entry["int8"] as? [String: Any])?["p50_ms"].map { "\($0)" } ?? "-"
                        let agent = (entry["agent_int8"] as? [String: Any])?["p50_ms"].map { ", agent int8 p50 \($0) ms" } ?? ""
                        FileHandle.standardError.write(
                            Data(
                                "\(path) \(kind) width \(m.architecture.widths[wi]): float p50 \(f) ms, int8 p50 \(q) ms\(agent)\n"
                                    .utf8))
                    }
                }
                runsDoc.append([
                    "kernels": path.name, "input": kind, "frames": frames.count,
                    "occupancy": occupied(frames), "results": results,
                ])
            }
        }
        // Width switching: a field write, no allocation.
        let switches = 1_000_000
        let a0 = slim_alloc_count()
        let t0 = SystemClock.monotonicNs()
        for i in 0..<switches { encoder.widthIndex = i % m.architecture.widths.count }
        let switchNs = Double(SystemClock.monotonicNs() - t0) / Double(switches)
        let doc: [String: Any] = [
            "benchmark": "encoder", "model": model, "input_shape": [c, h, w], "sparse": !dense, "threads": 1,
            "runs": runs,
            "kernels": paths.map(\.name), "kernels_supported": KernelPath.supported.map(\.name),
            "cpu": cpuDescription(),
            "runs_by_kernel": runsDoc,
            "width_switch": [
                "ns_per_switch": (switchNs * 100).rounded() / 100, "allocations": slim_alloc_count() - a0,
            ],
        ]
        print(
            String(
                decoding: try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys]),
                as: UTF8.self))
    }

    /// Every agent's sweep of every frame of the recording, featurized as the agent does.
    func simInputs(channels: Int, height: Int, width: Int) throws -> [FloatTensor] {
        let rec = try RecordingFrames(path: recording)
        let grid = BEVGrid()
        guard grid.height == height, grid.width == width, BEVGrid.channels == channels else {
            throw ValidationError(
                "the model takes \(channels)×\(height)×\(width); the featurizer gives \(BEVGrid.channels)×\(grid.height)×\(grid.width)"
            )
        }
        let featurizer = BEVFeaturizer(grid: grid)
        var out: [FloatTensor] = []
        for f in rec.frames {
            for id in rec.agents {
                guard let a = f.agents[id], let pose = a.pose, !a.points.isEmpty else { continue }
                let t = FloatTensor(height: height, width: width, channels: channels)
                a.points.withUnsafeBufferPointer {
                    featurizer.featurize($0, sensorHeight: Float(pose.position.z), into: t)
                }
                out.append(t)
            }
        }
        guard !out.isEmpty else { throw ValidationError("\(recording): no LiDAR sweeps with poses") }
        return out
    }

    func randomInput(channels: Int, height: Int, width: Int) -> FloatTensor {
        let t = FloatTensor(height: height, width: width, channels: channels)
        var rng = SimRandom(state: 3)
        for cell in 0..<(height * width) where rng.uniform() < occupancy {
            for ch in 0..<channels { t.storage[cell * channels + ch] = Float(rng.uniform() * 2) }
        }
        return t
    }

    /// Mean fraction of cells with any nonzero channel.
    func occupied(_ frames: [FloatTensor]) -> Double {
        var total = 0.0
        for t in frames {
            var n = 0
            for cell in 0..<(t.height * t.width)
            where (0..<t.channels).contains(where: { t.storage[cell * t.channels + $0] != 0 }) { n += 1 }
            total += Double(n) / Double(t.height * t.width)
        }
        return (total / Double(frames.count) * 10000).rounded() / 10000
    }

    /// Times `body` (after `setup`, untimed) `runs` times, after a warm-up.
    func measure(_ setup: () -> Void, _ body: () -> Void) -> [String: Any] {
        for _ in 0..<max(5, runs / 10) {
            setup()
            body()
        }
        var times: [Double] = []
        times.reserveCapacity(runs)
        let a0 = slim_alloc_count()
        for _ in 0..<runs {
            setup()
            let t = SystemClock.monotonicNs()
            body()
            times.append(Double(SystemClock.monotonicNs() - t) / 1e6)
        }
        let allocs = Double(slim_alloc_count() - a0) / Double(runs)
        times.sort()
        func p(_ q: Double) -> Double {
            (times[min(times.count - 1, Int(q * Double(times.count)))] * 1000).rounded() / 1000
        }
        return [
            "min_ms": (times[0] * 1000).rounded() / 1000, "p50_ms": p(0.5), "p99_ms": p(0.99),
            "allocations_per_frame": allocs,
        ]
    }
}

/// The CPU as `lscpu` names it, with the instruction sets the kernel paths use.
func cpuDescription() -> [String: Any] {
    var model = "unknown"
    var flags: Set<Substring> = []
    if let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) {
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let key = parts[0].trimmingCharacters(in: .whitespaces)
            if model == "unknown", key == "model name" || key == "Model" {
                model = parts[1].trimmingCharacters(in: .whitespaces)
            }
            if flags.isEmpty, key == "flags" || key == "Features" { flags = Set(parts[1].split(separator: " ")) }
        }
    }
    let wanted = ["avx2", "fma", "avx_vnni", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "asimd", "asimddp"]
    var d: [String: Any] = [
        "model": model, "logical_cpus": ProcessInfo.processInfo.activeProcessorCount,
        "isa": wanted.filter { flags.contains(Substring($0)) },
    ]
    // Under scripts/as-cpu, /proc/cpuinfo still lists the real CPU's flags; CPUID (and so the
    // kernel paths, ours and the peers') shows only the view's.
    if let view = ProcessInfo.processInfo.environment["AS_CPU_VIEW"], !view.isEmpty { d["cpuid_view"] = view }
    return d
}

func cpuName() -> String { cpuDescription()["model"] as? String ?? "unknown" }
