import ArgumentParser
import Logging

@main
struct SlimSplit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slimsplit",
        abstract: "Split computing for cooperative perception: edge agents send compressed features, a server fuses them.",
        discussion: """
            Quick start (a server and two agents on loopback, Curve on):
              slimsplit demo

            Run a server and an agent from configs:
              slimsplit keygen --name server --out keys && slimsplit keygen --name car-1 --out keys/agents
              slimsplit server --config Configs/server.yaml
              slimsplit agent --config Configs/agent.yaml
            """,
        subcommands: [ServerCommand.self, AgentCommand.self, RecordCommand.self, ReplayCommand.self, DatasetCommand.self, EvalCommand.self,
                      KeygenCommand.self, DemoCommand.self, BenchCommand.self])
}

/// Options every long-running command shares.
struct LogOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func bootstrap(label: String) -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}
