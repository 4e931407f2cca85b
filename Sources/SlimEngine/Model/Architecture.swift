import Foundation

/// A model's architecture, as embedded in its file (docs/model-format.md) and written in YAML
/// under Configs/models/.
public struct Architecture: Codable, Sendable, Equatable {
    public struct Input: Codable, Sendable, Equatable {
        public var name: String
        public var channels: Int
        public var height: Int
        public var width: Int
    }

    public struct Layer: Codable, Sendable, Equatable {
        public var name: String
        public var type: String
        public var input: String
        public var inChannels: Int
        public var outChannels: Int
        public var kernel: [Int]
        public var stride: [Int]
        public var padding: [Int]
        public var dilation: [Int]
        public var groups: Int
        public var bias: Bool
        public var batchNorm: String?
        public var bnEps: Double?
        public var activation: String?
        public var slimIn: Bool
        public var slimOut: Bool

        enum CodingKeys: String, CodingKey {
            case name, type, input, kernel, stride, padding, dilation, groups, bias, activation
            case inChannels = "in_channels"
            case outChannels = "out_channels"
            case batchNorm = "batch_norm"
            case bnEps = "bn_eps"
            case slimIn = "slim_in"
            case slimOut = "slim_out"
        }
    }

    public var name: String
    public var version: String
    public var input: Input
    public var widths: [Double]
    public var layers: [Layer]
    public var output: String

    /// Active channels of a dimension of `channels` at width index `i`: ⌈w·C⌉ when slim, computed
    /// so that binary rounding of w cannot add a channel (0.1·30 is 3, not 4).
    public func active(_ channels: Int, slim: Bool, width i: Int) -> Int {
        slim ? max(1, Int((widths[i] * Double(channels) - 1e-9).rounded(.up))) : channels
    }

    /// Parses and checks the architecture: known layer types and activations, positive sizes,
    /// inputs that name earlier layers with matching channels and slimness, valid widths.
    public static func parse(_ json: String, file: String) throws(ModelFileError) -> Architecture {
        func fail(_ subject: String, _ problem: String) -> ModelFileError {
            ModelFileError(kind: .architecture, file: file, subject: subject, problem: problem)
        }
        let a: Architecture
        do {
            a = try JSONDecoder().decode(Architecture.self, from: Data(json.utf8))
        } catch {
            throw fail("architecture", "not a valid architecture: \(error)")
        }
        guard !a.widths.isEmpty, a.widths.count <= 16, a.widths.allSatisfy({ $0 > 0 && $0 <= 1 }),
            zip(a.widths, a.widths.dropFirst()).allSatisfy({ $0 < $1 })
        else {
            throw fail("architecture.widths", "must be 1-16 increasing fractions in (0, 1], got \(a.widths)")
        }
        guard (1...4096).contains(a.input.channels) else {
            throw fail("architecture.input.channels", "\(a.input.channels) not in 1...4096")
        }
        var producers: [String: (channels: Int, slim: Bool)] = [a.input.name: (a.input.channels, false)]
        for l in a.layers {
            let s = "layer \(l.name)"
            guard producers[l.name] == nil else { throw fail(s, "duplicate name") }
            guard l.type == "conv2d" else { throw fail(s, "unknown type '\(l.type)' (format 1 knows conv2d)") }
            guard let p = producers[l.input] else {
                throw fail(s, "input '\(l.input)' is not the model input or an earlier layer")
            }
            guard p.channels == l.inChannels else {
                throw fail(s, "in_channels \(l.inChannels) but '\(l.input)' has \(p.channels)")
            }
            guard p.slim == l.slimIn else {
                throw fail(s, "slim_in \(l.slimIn) but '\(l.input)' has slim_out \(p.slim)")
            }
            guard (1...4096).contains(l.outChannels), l.groups >= 1, l.inChannels % l.groups == 0,
                l.outChannels % l.groups == 0
            else {
                throw fail(s, "channels \(l.inChannels)->\(l.outChannels) with groups \(l.groups) are not valid")
            }
            guard l.kernel.count == 2, l.stride.count == 2, l.padding.count == 2, l.dilation.count == 2,
                l.kernel.allSatisfy({ (1...15).contains($0) }), l.stride.allSatisfy({ (1...8).contains($0) }),
                l.padding.allSatisfy({ (0...15).contains($0) }), l.dilation.allSatisfy({ (1...8).contains($0) })
            else {
                throw fail(s, "kernel/stride/padding/dilation must be pairs within 1-15/1-8/0-15/1-8")
            }
            guard [nil, "relu", "relu6"].contains(l.activation) else {
                throw fail(s, "unknown activation '\(l.activation!)'")
            }
            guard [nil, "switchable", "shared"].contains(l.batchNorm) else {
                throw fail(s, "unknown batch_norm '\(l.batchNorm!)'")
            }
            if l.groups > 1 && !(l.groups == l.inChannels && l.groups == l.outChannels) && (l.slimIn || l.slimOut) {
                throw fail(s, "grouped (non-depthwise) layers cannot be slimmable")
            }
            if l.groups > 1 && l.slimIn != l.slimOut {
                throw fail(s, "a depthwise layer is slim in both channels or neither")
            }
            producers[l.name] = (l.outChannels, l.slimOut)
        }
        guard producers[a.output] != nil, a.output != a.input.name else {
            throw fail("architecture.output", "'\(a.output)' is not a layer")
        }
        return a
    }
}
