import SlimSensors

// Live LiDAR input: a packet capture (libpcap) whose UDP payloads to port 2368 go through the
// Velodyne sweep assembler of both models, and the raw input cut into 1206-byte packets.
// Invariants: every point is finite and within the format's range; refusals are counted, one
// per refused packet at most.

func fuzzVelodyne(_ input: UnsafeRawBufferPointer) {
    let bytes = Array(input)
    var packets: [[UInt8]] = stride(from: 0, to: bytes.count, by: Velodyne.packetSize).map {
        Array(bytes[$0..<min($0 + Velodyne.packetSize, bytes.count)])
    }
    if let grams = try? Pcap.udpPayloads(bytes, port: 2368) { packets += grams.map(\.payload) }
    for model in VelodyneModel.allCases {
        var sweeps = VelodyneSweeps(model: model)
        var out: [[SIMD4<Float>]] = []
        for p in packets { if let s = p.withUnsafeBytes({ sweeps.add($0) }) { out.append(s) } }
        if let s = sweeps.flush() { out.append(s) }
        let refused = sweeps.counters.filter { $0.key != "gaps" }.values.reduce(0, +)
        invariant(refused <= packets.count, "\(refused) refusals for \(packets.count) packets")
        for s in out {
            for p in s {
                let r = (p.x * p.x + p.y * p.y + p.z * p.z).squareRoot()
                invariant(r.isFinite && r <= Float(Velodyne.maxRange) + 0.01, "a point at \(r) m")
            }
        }
    }
}
