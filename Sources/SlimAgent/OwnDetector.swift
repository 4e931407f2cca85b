import SlimCore
import SlimEngine
import SlimPerception

/// The whole single-agent detector, run on the agent for the boxes rung (PROTOCOL.md §4.7): the
/// edge encoder at full width and 8 bits, dequantized as the server would, then the model's
/// server half with this agent alone. With a deep-fusion model, the agent's own head
/// (`DeepAgentStage`), which the agent runs for every frame anyway. Its boxes are what late fusion
/// merges. Buffers are planned at `init`; `detect` allocates only its result. Not thread-safe.
public final class OwnDetector: @unchecked Sendable {
    /// The map model's server half (nil for a deep-fusion model).
    public let detector: CooperativeDetector?
    private let features: FloatTensor
    /// Seconds of the last `detect`: the encoder pass and the detector.
    public private(set) var lastSeconds: (encode: Double, detect: Double) = (0, 0)

    /// - Parameter modelFile: the agent's model; it needs the server half (`server.*`).
    public init(modelFile: String, kernels: KernelPath = .default) throws {
        let st = try Safetensors(contentsOf: modelFile)
        guard try DeepArchitecture(st) == nil else {
            detector = nil
            features = FloatTensor(height: 1, width: 1, channels: 1)
            return
        }
        let detector = try CooperativeDetector(st, maxAgents: 1)
        detector.useInt8 = detector.hasInt8
        detector.kernels = kernels
        features = FloatTensor(height: detector.height, width: detector.width, channels: detector.channels)
        self.detector = detector
    }

    /// Detects in one sweep (points in the agent's frame). The encoder's width, bits and
    /// threshold are restored afterwards.
    public func detect(_ edge: EdgeEncoder, _ points: UnsafeBufferPointer<SIMD4<Float>>, sensorHeight: Float)
        -> [BEVBox]
    {
        let saved = (edge.widthIndex, edge.bits, edge.threshold)
        defer { (edge.widthIndex, edge.bits, edge.threshold) = saved }
        edge.widthIndex = edge.model.architecture.widths.count - 1
        edge.bits = 8
        edge.threshold = 0
        let t0 = SystemClock.monotonicSeconds()
        let shape = edge.encode(points, sensorHeight: sensorHeight)
        guard let detector else {
            let t1 = SystemClock.monotonicSeconds()
            let boxes = edge.deep?.boxes() ?? []
            lastSeconds = (t1 - t0, SystemClock.monotonicSeconds() - t1)
            return boxes
        }
        edge.dequantized(
            into: features, channels: shape.channels, height: shape.height, width: shape.width, masked: false)
        let t1 = SystemClock.monotonicSeconds()
        let boxes = detector.detect(ego: 0, agents: [.init(features: features, position: .zero, yaw: 0)])
        lastSeconds = (t1 - t0, SystemClock.monotonicSeconds() - t1)
        return boxes
    }
}
