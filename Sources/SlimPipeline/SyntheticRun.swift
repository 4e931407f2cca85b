import SlimAgent
import SlimConfig
import SlimCore
import SlimWire

/// Drives a `FeatureAgent` with synthetic feature maps at a fixed rate.
public func runSynthetic(agent: FeatureAgent, source: AgentConfig.SyntheticSource, seed: UInt64, stop: Locked<Bool>)
    async
{
    var features = SyntheticFeatures(
        channels: source.channels, height: source.height, width: source.width,
        bits: source.bits, occupancy: source.occupancy, seed: seed)
    let header = features.header(
        agentID: agent.identity.agentID, widthIndex: source.widthIndex,
        masked: source.mask, lz4: source.lz4)
    let period = UInt64(1e9 / source.rateHz)
    var pacer = Pacer(origin: 0)  // frame n is due n periods after the start
    var n = 0
    while !stop.value, source.frames == 0 || n < source.frames {
        var h = header
        h.captureTimeNs = SystemClock.wallNs()
        if let c = agent.control, c.maxBits < h.bits { h.bits = c.maxBits }  // respect the server's cap
        features.dense.withUnsafeBufferPointer { dense in
            features.mask.withUnsafeBytes { mask in
                _ = agent.submit(h, dense: dense, mask: source.mask ? mask : nil)
            }
        }
        n += 1
        features.next()
        try? await pacer.wait(for: UInt64(n) * period)
    }
}

/// Largest frame a synthetic source can produce (the send buffers' size).
public func maxFrameBytes(_ s: AgentConfig.SyntheticSource, agentID: String) -> Int {
    let f = FeatureFrameHeader(
        agentID: agentID, sequence: 0, captureTimeNs: 0, modelID: "synthetic", widthIndex: 0,
        bits: UInt8(s.bits), channels: s.channels, height: s.height, width: s.width,
        quant: .inline(
            scales: .init(repeating: 1, count: s.channels), zeroPoints: .init(repeating: 0, count: s.channels)),
        masked: true)
    return FeatureFrameEncoder.maxEncodedLength(f)
}
