import ArgumentParser
import Foundation
import SlimConfig
import SlimLive

/// `slimsplit health`: the liveness probe of a running server or agent, for container health
/// checks and exec probes in images that carry no HTTP client. It reads the `metrics` section of
/// the process's own config, sends `GET /metrics` to that port on this host and exits 0 on a 200
/// answer within the timeout, 1 otherwise (with the reason on standard error).
struct HealthCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "health",
        abstract: "Exit 0 if the server or agent of this config answers on its metrics endpoint (a health check).",
        discussion: """
            Used by the container images' HEALTHCHECK and usable as a Kubernetes exec probe or by hand:
              slimsplit health --config /etc/slimsplit/server.yaml
            The config's metrics.port must be set (not 0). A host of 0.0.0.0 or :: is probed on loopback.
            """)

    @Option(help: "The server's or agent's config (YAML); only its metrics section is read.")
    var config: String

    @Option(help: "Seconds to wait for the answer.")
    var timeout: Double = 2

    @Flag(help: "Print the metrics text on success.")
    var print = false

    func run() throws {
        let metrics = try ConfigSection.load(file: config).section("metrics")
        let port = try metrics.int("port", default: 0, in: 0...65535)
        guard port != 0 else {
            throw ValidationError("\(config): metrics.port is 0 (off): nothing to probe; set it to probe health")
        }
        var host = try metrics.string("host", default: "0.0.0.0")
        if host == "0.0.0.0" || host == "::" || host.isEmpty { host = "127.0.0.1" }
        switch MetricsProbe.get(host: host, port: port, path: "/metrics", timeoutSeconds: timeout) {
        case .success(let body):
            if print { Swift.print(body, terminator: "") }
        case .failure(let why):
            FileHandle.standardError.write(Data("unhealthy: http://\(host):\(port)/metrics: \(why)\n".utf8))
            throw ExitCode(1)
        }
    }
}
