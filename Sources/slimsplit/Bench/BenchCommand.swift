import ArgumentParser

struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks that compare SlimSplit with a peer in the same run and print JSON.",
        subcommands: [WireBench.self, EncoderBench.self, SensorBench.self, E2EBench.self])
}
