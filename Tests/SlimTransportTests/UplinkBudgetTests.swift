import Foundation
import SlimAgent
import SlimEngine
import SlimPerception
import SlimServer
import SlimTransport
import Testing

@Suite("Uplink budget: shares by coverage, caps by Control")
struct UplinkBudgetTests {
    /// A rate–accuracy table shaped like the shipped model's (bytes ∝ channels × bits).
    static let table: [RateAccuracyEntry] = {
        var t: [RateAccuracyEntry] = []
        for wi in 0..<4 {
            for b in [8, 4, 2] {
                let bytes: Double = 57_000 * Double(wi + 1) / 4 * Double(b) / 8
                let ap: Double = 40 + Double(wi) + Double(b) / 4
                t.append(RateAccuracyEntry(widthIndex: wi, bits: b, bytes: bytes, ap50: ap))
            }
        }
        return t
    }()

    @Test("the model's rate-accuracy table reads numbers as their nearest double and names a bad entry")
    func tableFromJSON() throws {
        let q: [QuantKey: FeatureQuantization] = [
            QuantKey(widthIndex: 0, bits: 8): FeatureQuantization(scale: [1], zeroPoint: [0], bits: 8)
        ]
        // 38 digits: JSONSerialization on Linux reads this as an NSDecimalNumber whose double is
        // three ulps off the nearest one; the table must read as Double's own parse.
        let digits = "216.44444444444444444444444444444444444"
        let json = #"{"entries":[{"width_index":0,"bits":8,"bytes":\#(digits),"ap50":67.28}]}"#
        let table = try RateAccuracyEntry.table(json: json, file: "m.safetensors", quantization: q)
        #expect(table == [RateAccuracyEntry(widthIndex: 0, bits: 8, bytes: try #require(Double(digits)), ap50: 67.28)])
        let missing = #"{"entries":[{"width_index":0,"bits":8,"bytes":1,"ap50":1},{"width_index":0,"bits":8}]}"#
        let error = #expect(throws: ModelFileError.self) {
            try RateAccuracyEntry.table(json: missing, file: "m.safetensors", quantization: q)
        }
        #expect("\(String(describing: error))".contains("entries[1]"))
        #expect("\(String(describing: error))".contains("m.safetensors"))
    }

    @Test("a roadside unit that alone sees its road earns more than two cars that see the same one")
    func shares() {
        let budget = UplinkBudget(bitsPerSecond: 4_000_000, table: Self.table)
        let agents = [
            UplinkBudget.Agent(id: "car-1", position: .init(0, 0), yaw: 0, rateHz: 10),
            UplinkBudget.Agent(id: "car-2", position: .init(10, 0), yaw: .pi / 2, rateHz: 10),
            UplinkBudget.Agent(id: "rsu-1", position: .init(200, 0), yaw: 0, rateHz: 10),
        ]
        let caps = budget.caps(for: agents)
        let (c1, c2, r) = (caps["car-1"]!, caps["car-2"]!, caps["rsu-1"]!)
        #expect(abs(c1.credit + c2.credit + r.credit - 1) < 1e-9)
        #expect(abs(c1.shareBitsPerSecond + c2.shareBitsPerSecond + r.shareBitsPerSecond - 4_000_000) < 1)
        #expect(r.credit > c1.credit && r.credit > c2.credit)
        // All its 1024 cells (2 m) against the cars' union: 64 x 64 m plus the 10 m offset, 1184 cells.
        #expect(abs(r.credit - 1024.0 / (1024 + 1184)) < 0.005)
        #expect(abs(c1.credit - c2.credit) < 0.005)
        // Every cap fits its share: the capped configuration's bytes x 10 Hz.
        for cap in [c1, c2, r] {
            let e = Self.table.first { $0.widthIndex == cap.maxWidthIndex && $0.bits == cap.maxBits }!
            #expect(e.bytes * 8 * 10 <= cap.shareBitsPerSecond)
        }
        // The roadside unit's larger share buys a larger configuration.
        let bytes = { (c: UplinkBudget.Cap) in
            Self.table.first { $0.widthIndex == c.maxWidthIndex && $0.bits == c.maxBits }!.bytes
        }
        #expect(bytes(r) > bytes(c1))
        // A budget too small for anything: the cheapest configuration.
        let tiny = UplinkBudget(bitsPerSecond: 1_000, table: Self.table).caps(for: agents)["rsu-1"]!
        #expect(tiny.maxWidthIndex == 0 && tiny.maxBits == 2)
    }

    @Test("a Control cap reaches the agent over the socket")
    func capReachesAgent() async throws {
        let keys = try CurveKeyPair.generate()
        let server = try TestServer(allowed: ["car-1": keys])
        let agent = try TestAgent(id: "car-1", server: server, keys: keys)
        #expect(await agent.stream(3))
        #expect(server.server.sendControl(toAgent: "car-1", maxWidthIndex: 1, maxBits: 4))
        #expect(await eventually(60) { agent.agent.control?.reason == 1 })
        #expect(agent.agent.control?.maxWidthIndex == 1 && agent.agent.control?.maxBits == 4)
        #expect(!server.server.sendControl(toAgent: "nobody", maxWidthIndex: 0, maxBits: 2))
        // max_rate_hz is a cap the agent keeps (PROTOCOL.md §4.5): at 0.2 Hz, of ten frames
        // submitted back to back at most one goes (none if the last one went under 5 s ago);
        // the others are counted.
        #expect(server.server.sendControl(toAgent: "car-1", maxWidthIndex: 255, maxBits: 8, maxRateHz: 0.2))
        #expect(await eventually(60) { agent.agent.control?.maxRateHz == 0.2 })
        let before = agent.agent.stats
        var sent = 0
        for _ in 0..<10 {
            if TestAgent.dense.withUnsafeBufferPointer({ agent.agent.submit(TestAgent.header, dense: $0, mask: nil) })
                != nil
            {
                sent += 1
            }
        }
        let capped = agent.agent.stats.framesRateCapped - before.framesRateCapped
        #expect(sent <= 1 && sent + capped == 10, "sent \(sent), capped \(capped)")
        await agent.stop()
        await server.stop()
    }
}
