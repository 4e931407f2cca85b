import Foundation
import Logging
import SlimAgent
import SlimEngine
import SlimPipeline
import SlimSensors
import SlimTransport
import SlimWire

/// `slimsplit agent --check`: what the person at the board needs to know before streaming: the
/// config, the keys, the model, the recording and the server, each with what is wrong.
enum AgentCheck {
    /// Prints one line per check; returns true if all passed.
    static func run(config path: String, server override: String?, logger: Logger) async -> Bool {
        var ok = true
        func line(_ mark: Bool, _ what: String, _ detail: String) {
            print("\(mark ? "ok  " : "FAIL") \(what.padding(toLength: 10, withPad: " ", startingAt: 0)) \(detail)")
            if !mark { ok = false }
        }
        let cfg: AgentConfig
        do {
            cfg = try AgentConfig.load(file: path)
            line(true, "config", "\(path): agent \(cfg.agentID), server \(override ?? cfg.server)")
        } catch {
            line(false, "config", "\(error)")
            return false
        }
        line(
            true, "kernels",
            "\(KernelPath.default) (this CPU runs \(KernelPath.supported.map(\.name).joined(separator: ", ")))")
        var curve: CurveClient?
        if let c = cfg.curve {
            do {
                let keys = try CurveKeyPair(secretKeyFile: c.secretKey)
                curve = CurveClient(keyPair: keys, serverKey: try CurveKey(file: c.serverKey))
                line(
                    true, "keys",
                    "\(c.secretKey) and the server's \(c.serverKey); the server's allowed_keys must hold this key as \(cfg.agentID).pub"
                )
            } catch {
                line(false, "keys", "\(error)")
            }
        } else {
            line(true, "keys", "Curve is off: traffic is neither encrypted nor authenticated")
        }
        var identity = AgentIdentity(agentID: cfg.agentID, modelID: "synthetic")
        if let src = cfg.source {
            do {
                let e = try EdgeEncoder(modelFile: src.model)
                identity = AgentIdentity(
                    agentID: cfg.agentID, modelID: e.modelID,
                    widths: e.model.architecture.widths.map { UInt16(($0 * 1000).rounded()) }, bitsMask: e.bitsMask)
                line(true, "model", "\(src.model): \(e.modelID), widths \(e.model.architecture.widths)")
            } catch {
                line(false, "model", "\(error)")
            }
            do {
                let rec = try RecordingFrames(path: src.recording)
                let sweeps = rec.frames.filter { $0.agents[src.agent]?.points.isEmpty == false }.count
                line(
                    sweeps > 0, "recording",
                    sweeps > 0
                        ? "\(src.recording): \(sweeps) sweeps of \(src.agent)"
                        : "\(src.recording) has no LiDAR of agent '\(src.agent)' (it has: \(rec.agents.joined(separator: ", ")))"
                )
            } catch {
                line(false, "recording", "\(error)")
            }
        }
        // The server: a Hello must come back as a Control.
        let endpoint = override ?? cfg.server
        do {
            let agent = try FeatureAgent(
                identity: identity, server: endpoint, curve: curve, options: cfg.socket, maxFrameBytes: 1 << 16,
                logger: logger)
            let consumer = Task { await agent.run() }
            let t0 = SystemClock.monotonicNs()
            while agent.control == nil, SystemClock.monotonicNs() - t0 < 5_000_000_000 {
                try? await Task.sleep(nanoseconds: 20_000_000)
            }
            if let c = agent.control {
                line(
                    true, "server",
                    "\(endpoint) answered the Hello (Control epoch \(c.epoch)) in \((SystemClock.monotonicNs() - t0) / 1_000_000) ms"
                )
            } else {
                line(
                    false, "server",
                    "no answer from \(endpoint) in 5 s: is the server running and the port open"
                        + (curve != nil
                            ? ", does it have this key (\(cfg.agentID).pub) in its allowed_keys, and is server_key its public key?"
                            : "?"))
            }
            agent.endpoint.close()
            await consumer.value
        } catch {
            line(false, "server", "\(error)")
        }
        return ok
    }
}
