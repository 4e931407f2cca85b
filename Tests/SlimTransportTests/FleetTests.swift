import Foundation
import SlimConfig
import SlimFleet
import SlimWire
import TestSupport
import Testing

/// Two regions split at x = 0, with a 10 m overlap margin on each side; each stands in for the other.
private func twoRegions() throws -> RegionMap {
    try RegionMap(
        regions: [
            Region(name: "west", minX: -1000, maxX: 0, minY: -100, maxY: 100, standby: "east"),
            Region(name: "east", minX: 0, maxX: 1000, minY: -100, maxY: 100, standby: "west"),
        ], margin: 10)
}

private let west = FleetMember(region: "west", endpoint: "tcp://10.0.0.1:5555", name: "w")
private let east = FleetMember(region: "east", endpoint: "tcp://10.0.0.2:5555", serverKey: Array(1...32), name: "e")

@Suite("Fleet: region map and handover decisions")
struct FleetPolicyTests {
    @Test("a region map file is validated with the key named")
    func mapValidation() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-regions-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        func load(_ text: String) -> String? {
            let f = dir.appendingPathComponent("r.yaml")
            try? text.write(to: f, atomically: true, encoding: .utf8)
            do {
                _ = try RegionMap.load(file: f.path)
                return nil
            } catch { return error.description }
        }
        #expect(load("margin_m: 5\nregions:\n  a: {x_min: 0, x_max: 10, y_min: 0, y_max: 10}\n") == nil)
        #expect(
            load(
                "regions:\n  a: {x_min: 0, x_max: 10, y_min: 0, y_max: 10}\n  b: {x_min: 5, x_max: 20, y_min: 0, y_max: 10}\n"
            )?
            .contains("regions.a: overlaps region b") == true)
        #expect(
            load("regions:\n  a: {x_min: 0, x_max: 10, y_min: 0, y_max: 10, standby: c}\n")?.contains(
                "regions.a.standby") == true)
        #expect(load("regions:\n  a: {x_min: 10, x_max: 0, y_min: 0, y_max: 10}\n")?.contains("x_min < x_max") == true)
        #expect(
            load("regions:\n  a: {x_min: 0, x_max: 1, y_min: 0, y_max: 1, colour: red}\n")?.contains("colour") == true)
    }

    @Test("home server: standby, then prepare in the margin, cancel on turning back; commit past the boundary")
    func decisions() throws {
        let map = try twoRegions()
        let both = ["west": west, "east": east]
        var p = HandoverPolicy()
        let v = FleetView(map: map, members: both, me: west)
        var t: UInt64 = 1
        func at(_ x: Double, _ view: FleetView = v) -> [Handover] {
            t += 100_000_000
            return p.observe(agent: "car-1", x: x, y: 0, view: view, nowNs: t)
        }
        // Deep in west: where to go if west dies.
        #expect(at(-50).map(\.action) == [.standby])
        #expect(at(-40).isEmpty)  // nothing new
        // In east's margin: mirror to east, with its key.
        let prep = at(-5)
        #expect(prep.map(\.action) == [.prepare] && prep[0].endpoint == east.endpoint)
        #expect(prep[0].curveKey == Array(1...32) && prep[0].region == "east")
        #expect(at(-20).map(\.action) == [.cancel])
        #expect(at(-5).map(\.action) == [.prepare])
        // Past the boundary: east is home now.
        #expect(at(3).map(\.action) == [.commit])
        #expect(at(4).isEmpty)
        // Epochs increase with every message to the agent.
        let e0 = at(-5).first?.epoch ?? 0
        #expect(e0 > prep[0].epoch)
        // East, the new home: west's margin still holds the agent, so it keeps west as a mirror.
        var q = HandoverPolicy()
        let ev = FleetView(map: map, members: both, me: east)
        let fromEast = q.observe(agent: "car-1", x: 3, y: 0, view: ev, nowNs: 1)
        #expect(Set(fromEast.map(\.action)) == [.prepare, .standby])
        #expect(fromEast.allSatisfy { $0.endpoint == west.endpoint })
    }

    @Test("a dead server's region is served by its standby, which then keeps the agents")
    func standbyTakesOver() throws {
        let map = try twoRegions()
        let alive = FleetView(map: map, members: ["west": west, "east": east], me: west)
        #expect(alive.served == ["west"])
        let eastGone = FleetView(map: map, members: ["west": west], me: west)
        #expect(eastGone.server(for: "east") == west)
        #expect(Set(eastGone.served) == ["east", "west"])
        var p = HandoverPolicy()
        // Before the lease expired west would send the agent back to east; after, it keeps it.
        #expect(p.observe(agent: "a", x: 50, y: 0, view: alive, nowNs: 1).map(\.action) == [.commit])
        #expect(p.observe(agent: "a", x: 51, y: 0, view: eastGone, nowNs: 2).allSatisfy { $0.action != .commit })
    }

    @Test("leaving: every agent this server is home to is told to commit to its standby")
    func farewells() throws {
        let map = try twoRegions()
        var p = HandoverPolicy()
        let v = FleetView(map: map, members: ["west": west, "east": east], me: west)
        _ = p.observe(agent: "a", x: -50, y: 0, view: v, nowNs: 1)  // home here, standby east
        _ = p.observe(agent: "b", x: 50, y: 0, view: v, nowNs: 1)  // home is east: not ours to move
        let bye = p.farewells(view: v)
        #expect(bye.map(\.agent) == ["a"])
        #expect(bye.first?.handover.action == .commit && bye.first?.handover.endpoint == east.endpoint)
        #expect(p.farewells(view: v).isEmpty)  // said once
    }

    @Test("advice is said again every second (an agent ignores what reached it before the server was its home)")
    func restates() throws {
        let map = try twoRegions()
        var p = HandoverPolicy()
        let v = FleetView(map: map, members: ["west": west, "east": east], me: west)
        #expect(Set(p.observe(agent: "a", x: -5, y: 0, view: v, nowNs: 1).map(\.action)) == [.prepare, .standby])
        #expect(p.observe(agent: "a", x: -5, y: 0, view: v, nowNs: 500_000_000).isEmpty)
        #expect(
            Set(p.observe(agent: "a", x: -5, y: 0, view: v, nowNs: 1_100_000_000).map(\.action)) == [
                .prepare, .standby,
            ])
    }
}

/// A real etcd, two region servers and an agent (the shipped binary, real sockets): the agent
/// drives across the boundary (one make-before-break handover), then its new home is killed
/// (one failover to the standby). No frame is lost: every frame some server got is acknowledged.
@Suite("Fleet: handover and failover with a real etcd", .serialized)
struct FleetSessionTests {
    static let etcd: String? = ["/usr/bin/etcd", "/usr/local/bin/etcd"].first {
        FileManager.default.isExecutableFile(atPath: $0)
    }

    final class Proc: @unchecked Sendable {
        let p = Process()
        let log: URL
        init(_ exe: String, _ args: [String], in dir: URL, log name: String) throws {
            log = dir.appendingPathComponent(name)
            _ = FileManager.default.createFile(atPath: log.path, contents: nil)
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = args
            p.currentDirectoryURL = dir
            let h = try FileHandle(forWritingTo: log)
            p.standardOutput = h
            p.standardError = h
            try p.run()
        }
        var text: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }
        /// Signals the process (whatever Foundation thinks of its state: a leftover etcd would
        /// outlive the test).
        func stop(_ sig: Int32 = SIGTERM) {
            if p.processIdentifier > 0 { kill(p.processIdentifier, sig) }
        }
    }

    @Test(
        .enabled(if: ShutdownTests.binary != nil, "the slimsplit binary is not built beside the tests"),
        .enabled(if: etcd != nil, "etcd is not installed (Debian: apt-get install etcd-server)"))
    func handoverThenFailover() async throws {
        let bin = ShutdownTests.binary!
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("slimsplit-fleet-\(getpid())")
        try? FileManager.default.removeItem(at: dir)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var procs: [Proc] = []
        defer {
            for p in procs { p.stop(SIGKILL) }
            if ProcessInfo.processInfo.environment["SLIMSPLIT_KEEP"] == nil {
                try? FileManager.default.removeItem(at: dir)
            }
        }
        func write(_ name: String, _ text: String) throws {
            try text.write(to: dir.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        // One car driving through x = 0 at the recording's middle (the simulator centres routes there).
        try write(
            "scene.yaml",
            """
            name: crossing
            kind: straight
            duration_s: 8
            rate_hz: 10
            road: {lanes_per_direction: 1, length_m: 200}
            buildings: 4
            parked_cars: 2
            vehicles: 4
            agents: {vehicles: 1, roadside_unit: false}
            lidar: {beams: 16, azimuth_resolution_deg: 0.8}

            """)
        let rec = try #require(
            await runProcess(
                [bin, "record", "--scene", "scene.yaml", "--seed", "2", "--out", "crossing.mcap"], directory: dir))
        try #require(rec.status == 0, "\(rec.output)")
        try write(
            "regions.yaml",
            "margin_m: 10\nregions:\n  west: {x_min: -1000, x_max: 0, y_min: -100, y_max: 100, standby: east}\n"
                + "  east: {x_min: 0, x_max: 1000, y_min: -100, y_max: 100, standby: west}\n")
        let client = freeLoopbackPort()
        let peer = freeLoopbackPort()
        procs.append(
            try Proc(
                Self.etcd!,
                [
                    "--data-dir", dir.appendingPathComponent("etcd").path,
                    "--listen-client-urls", "http://127.0.0.1:\(client)", "--advertise-client-urls",
                    "http://127.0.0.1:\(client)",
                    "--listen-peer-urls", "http://127.0.0.1:\(peer)", "--initial-advertise-peer-urls",
                    "http://127.0.0.1:\(peer)",
                    "--initial-cluster", "default=http://127.0.0.1:\(peer)",
                    "--election-timeout", "500", "--heartbeat-interval", "50",
                ], in: dir, log: "etcd.log"))
        // The registry's own client, against the real etcd: a leased key vanishes when its lease goes.
        let etcd = try EtcdClient(url: "http://127.0.0.1:\(client)")
        var up = false
        for _ in 0..<100 where !up {
            up = (try? await etcd.range(prefix: "/")) != nil
            if !up { try await Task.sleep(for: .milliseconds(100)) }
        }
        try #require(up, "etcd did not start: \(procs[0].text.suffix(2000))")
        let lease = try await etcd.grant(ttlSeconds: 60)  // long: a loaded machine may pause this task for seconds
        try await etcd.put("/t/a", Array("x".utf8), lease: lease)
        #expect(try await etcd.range(prefix: "/t/").map(\.key) == ["/t/a"])
        #expect(try await etcd.keepAlive(lease: lease) > 0)
        try await etcd.revoke(lease: lease)
        #expect(try await etcd.range(prefix: "/t/").isEmpty)

        var servers: [String: (endpoint: String, proc: Proc)] = [:]
        for region in ["west", "east"] {
            let port = freeLoopbackPort()
            try write(
                "server-\(region).yaml",
                "endpoint: tcp://127.0.0.1:\(port)\ncurve: {enabled: false}\nmetrics: {port: 0}\n"
                    + "fleet: {etcd: 'http://127.0.0.1:\(client)', region: \(region), regions: regions.yaml, lease_ttl_s: 2}\n"
            )
            servers[region] = (
                "tcp://127.0.0.1:\(port)",
                try Proc(
                    bin, ["server", "--config", "server-\(region).yaml", "--status-interval", "0"], in: dir,
                    log: "\(region).log")
            )
            procs.append(servers[region]!.proc)
        }
        for (_, s) in servers {
            #expect(await eventually(60) { s.proc.text.contains("listening") }, "\(s.proc.text.suffix(2000))")
        }
        let model = repoRoot.appendingPathComponent("Models/slimsplit-bev.safetensors").path
        try write(
            "agent.yaml",
            "agent_id: car-1\nserver: \(servers["west"]!.endpoint)\ncurve: {enabled: false}\n"
                + "source: {recording: crossing.mcap, agent: car_1, model: \(model), bits: 4, loop: false}\n")
        let agent = try Proc(
            bin, ["agent", "--config", "agent.yaml", "--summary", "summary.json"], in: dir, log: "agent.log")
        procs.append(agent)
        // Wait for a move into the other region, then kill the agent's new home.
        #expect(
            await eventually(120) { agent.text.contains("handover") || !agent.p.isRunning },
            "\(agent.text.suffix(3000))")
        let line = agent.text.split(separator: "\n").last { $0.contains("handover") }.map(String.init) ?? ""
        let home = servers.first { line.contains("to=\($0.value.endpoint)") }
        let victim = try #require(home, "no handover line: \(agent.text.suffix(3000))")
        victim.value.proc.stop(SIGKILL)
        #expect(await eventually(120) { !agent.p.isRunning }, "the agent did not finish")
        agent.p.waitUntilExit()
        #expect(agent.p.terminationStatus == 0, "\(agent.text.suffix(3000))")
        let data = try Data(contentsOf: dir.appendingPathComponent("summary.json"))
        let summary = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let roaming = try #require(summary["roaming"] as? [String: Any], "no roaming in \(summary)")
        let kinds = (roaming["events"] as? [[String: Any]] ?? []).compactMap { $0["kind"] as? String }
        #expect(kinds.contains("handover"), "\(kinds)")
        #expect(kinds.last == "failover", "\(kinds)")
        let frames = summary["frames"] as? Int ?? 0
        #expect(frames > 40, "\(summary)")
        #expect(summary["lost"] as? Int == 0, "\(summary)")
        #expect(summary["acked"] as? Int == frames, "\(summary)")
        // The survivor took the dead server's region over once its lease expired.
        let survivor = servers.first { $0.key != victim.key }!.value.proc
        #expect(survivor.text.contains("serving=[\"east\", \"west\"]"), "\(survivor.text.suffix(2000))")
    }
}
