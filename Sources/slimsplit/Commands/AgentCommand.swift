import ArgumentParser
import Logging
import SlimAgent
import SlimConfig
import SlimTransport

struct AgentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agent",
        abstract: "Run an edge agent: connect to the server and stream feature frames.",
        discussion: """
            Until the encoder pipeline lands, the agent streams synthetic feature maps shaped like a BEV
            encoder's (section `synthetic` of the config). Stops on SIGINT/SIGTERM or after `synthetic.frames`.
            """)

    @Option(help: "Agent config (YAML); every key is documented in Configs/agent.yaml.")
    var config: String = "Configs/agent.yaml"

    @Option(help: "Override the config's server endpoint.")
    var server: String?

    @Option(help: "Override synthetic.frames (0: until a signal).")
    var frames: Int?

    @OptionGroup var log: LogOptions

    func run() async throws {
        let logger = log.bootstrap(label: "slimsplit.agent")
        var cfg = try AgentConfig.load(file: config)
        if let frames { cfg.synthetic.frames = frames }
        var curve: CurveClient?
        if let c = cfg.curve {
            curve = CurveClient(keyPair: try CurveKeyPair(secretKeyFile: c.secretKey), serverKey: try CurveKey(file: c.serverKey))
        }
        let agent = try FeatureAgent(identity: AgentIdentity(agentID: cfg.agentID, modelID: "synthetic"), server: server ?? cfg.server,
                                     curve: curve, options: cfg.socket,
                                     maxFrameBytes: maxFrameBytes(cfg.synthetic, agentID: cfg.agentID), logger: logger)
        let dealer = agent.endpoint
        let stop = Locked(false)
        let signals = onShutdownSignal { stop.withLock { $0 = true } }
        let consumer = Task { await agent.run() }
        logger.info("streaming", metadata: ["agent": "\(cfg.agentID)", "server": "\(dealer.endpoint)"])
        let start = Clock.monotonicNs()
        await runSynthetic(agent: agent, source: cfg.synthetic, seed: 1, stop: stop)
        // Give the last frames time to be acknowledged.
        let deadline = Clock.monotonicNs() + 2_000_000_000
        while agent.stats.acks < agent.stats.framesSubmitted - agent.stats.framesReplaced, Clock.monotonicNs() < deadline {
            await sleepSeconds(0.02)
        }
        dealer.close()
        await consumer.value
        _ = signals
        print(agentTable([agent], seconds: Double(Clock.monotonicNs() - start) / 1e9).render())
        if agent.stats.acks == 0 { throw ExitCode(1) }
    }
}
