import ArgumentParser

/// The benchmarks, an executable of their own: it links the allocation counter (which interposes
/// malloc) so that the shipped `slimsplit` does not.
@main
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slimsplit-bench",
        abstract:
            "Benchmarks that compare SlimSplit with a peer in the same run and print JSON (build: swift build -c release --product slimsplit-bench).",
        subcommands: [WireBench.self, EncoderBench.self, SensorBench.self, E2EBench.self])
}
