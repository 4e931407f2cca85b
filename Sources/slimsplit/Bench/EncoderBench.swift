import ArgumentParser
import CAllocCounter
import Foundation
import SlimEngine
import SlimTransport

/// The edge encoder at every width, float and int8, one thread.
struct EncoderBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encoder",
        abstract: "Latency of the slimmable encoder at each width, float and int8, one thread; allocations per frame; width-switch time.",
        discussion: """
            Input: a BEV-like 8×128×128 grid with ~15 % of cells occupied (as a LiDAR featurizer produces).
            Benchmarks/peers.py runs the same model file in PyTorch and ONNX Runtime and prints the ratios.
            """)

    @Option(help: "Model file (safetensors, docs/model-format.md).")
    var model: String = "Tests/Fixtures/engine/ref_encoder.safetensors"

    @Option(help: "Input height and width (cells).")
    var size: Int = 128

    @Option(help: "Timed runs per configuration.")
    var runs: Int = 300

    @Option(help: "Fraction of occupied BEV cells in the input.")
    var occupancy: Double = 0.15

    @Flag(help: "Compute every cell (no sparse skipping).")
    var dense = false

    @Flag(help: "Time int8 only (for profiling).")
    var int8Only = false

    @Flag(help: "Print JSON only.")
    var json = false

    func run() throws {
        let m = try SlimmableModel(contentsOf: model)
        let encoder = SlimmableEncoder(model: m, inputHeight: size, inputWidth: size)
        encoder.sparse = !dense
        let input = FloatTensor(height: size, width: size, channels: m.architecture.input.channels)
        var rng = SplitMix64(seed: 3)
        for cell in 0..<(size * size) where rng.unit() < occupancy {
            for c in 0..<input.channels { input.storage[cell * input.channels + c] = Float(rng.unit() * 2) }
        }
        var results: [[String: Any]] = []
        for wi in m.architecture.widths.indices {
            encoder.widthIndex = wi
            var entry: [String: Any] = ["width": m.architecture.widths[wi], "width_index": wi, "output_channels": encoder.outputChannels]
            entry["float"] = int8Only ? ["p50_ms": 0.0] : measure { _ = encoder.runFloat(input) }
            if m.int8 != nil { entry["int8"] = measure { _ = encoder.runInt8(input) } }
            results.append(entry)
            if !json {
                let f = entry["float"] as! [String: Any], q = entry["int8"] as? [String: Any]
                FileHandle.standardError.write(Data("width \(m.architecture.widths[wi]): float p50 \(f["p50_ms"]!) ms (min \(f["min_ms"] ?? 0)), int8 p50 \(q?["p50_ms"] ?? "-") ms (min \(q?["min_ms"] ?? "-"))\n".utf8))
            }
        }
        // Width switching: a field write, no allocation.
        let switches = 1_000_000
        let a0 = slim_alloc_count(), t0 = Clock.monotonicNs()
        for i in 0..<switches { encoder.widthIndex = i % m.architecture.widths.count }
        let switchNs = Double(Clock.monotonicNs() - t0) / Double(switches)
        let switchAllocs = slim_alloc_count() - a0
        let doc: [String: Any] = [
            "benchmark": "encoder", "model": model, "input": [m.architecture.input.channels, size, size],
            "occupancy": occupancy, "sparse": !dense, "threads": 1, "runs": runs,
            "int8_kernel": QConv2d.vnniAvailable ? "avx512-vnni" : "portable",
            "cpu": cpuName(), "results": results,
            "width_switch": ["ns_per_switch": (switchNs * 100).rounded() / 100, "allocations": switchAllocs],
        ]
        print(String(decoding: try JSONSerialization.data(withJSONObject: doc, options: [.prettyPrinted, .sortedKeys]), as: UTF8.self))
    }

    func measure(_ body: () -> Void) -> [String: Any] {
        for _ in 0..<max(5, runs / 10) { body() }
        var times: [Double] = []
        times.reserveCapacity(runs)
        let a0 = slim_alloc_count()
        for _ in 0..<runs {
            let t = Clock.monotonicNs()
            body()
            times.append(Double(Clock.monotonicNs() - t) / 1e6)
        }
        let allocs = Double(slim_alloc_count() - a0 - 0) / Double(runs)
        times.sort()
        func p(_ q: Double) -> Double { (times[min(times.count - 1, Int(q * Double(times.count)))] * 1000).rounded() / 1000 }
        return ["min_ms": (times[0] * 1000).rounded() / 1000, "p50_ms": p(0.5), "p99_ms": p(0.99), "allocations_per_frame": allocs]
    }
}

func cpuName() -> String {
    guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown" }
    for line in text.split(separator: "\n") where line.hasPrefix("model name") {
        return String(line.split(separator: ":", maxSplits: 1).last ?? "").trimmingCharacters(in: .whitespaces)
    }
    return "unknown"
}
