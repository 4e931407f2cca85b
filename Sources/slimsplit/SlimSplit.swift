import ArgumentParser
import CShutdown
import Logging
import SlimEngine

@main
struct SlimSplit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slimsplit",
        abstract:
            "Split computing for cooperative perception: edge agents send compressed features, a server fuses them.",
        discussion: """
            Quick start (a server and two agents on loopback, Curve on):
              slimsplit demo

            Run a server and an agent from configs:
              slimsplit keygen --name server --out keys && slimsplit keygen --name car-1 --out keys/agents
              slimsplit server --config Configs/server.yaml
              slimsplit agent --config Configs/agent.yaml
            """,
        subcommands: [
            ServerCommand.self, AgentCommand.self, RecordCommand.self, ReplayCommand.self, DatasetCommand.self,
            EvalCommand.self,
            KeygenCommand.self, DemoCommand.self, HealthCommand.self,
        ])
}

/// Options every long-running command shares.
struct LogOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Engine kernel path: \(KernelPath.all.map(\.name).joined(separator: ", ")) (default: SLIMSPLIT_KERNELS, else the fastest this CPU runs).",
            valueName: "path"))
    var kernels: String?

    /// Sets up logging and the engine's kernel path (logged at start). With `catchSignals`, SIGINT
    /// and SIGTERM are caught from here on, for a command that installs its shutdown handler
    /// (`onShutdownSignal`) later: a signal that comes first waits for it instead of killing the
    /// process.
    /// - Throws: `KernelPathError` when the path is unknown or this CPU cannot run it.
    func bootstrap(label: String, catchSignals: Bool = false) throws -> Logger {
        if catchSignals { _ = slim_shutdown_install() }
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        var logger = Logger(label: label)
        logger.logLevel = level
        let path = try KernelPath.configure(kernels)
        logger.info(
            "engine",
            metadata: ["kernels": "\(path)", "cpu_runs": "\(KernelPath.supported.map(\.name).joined(separator: ","))"])
        return logger
    }
}
