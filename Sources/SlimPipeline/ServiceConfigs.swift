import SlimAgent
import SlimConfig
import SlimSensors
import SlimTransport
import SlimWire

/// `Configs/server.yaml`. Every key is documented there and in docs/configuration.md.
public struct ServerConfig: Sendable {
    public var endpoint: String
    public var curve: CurveFiles?
    public var limits: WireLimits
    public var socket: SocketOptions
    public var rejectLogInterval: Double
    /// Fusion: the model file (nil: accept and acknowledge frames only).
    public var model: String?
    public var tickHz: Double
    public var windowMs: Double
    public var fusionMode: String
    /// Threads a fusion pass spreads the agents over (`fusion.threads`; 0: one per core).
    public var fusionThreads: Int
    /// MCAP file the server records fused detections to (world frame, /fusion/detections).
    public var recordPath: String?
    /// Seconds between the recording's chunk flushes: after a crash, at most this much is lost.
    public var recordFlushSeconds: Double
    /// File (or "-" for stdout) that gets one JSON line per Result.
    public var jsonLines: String?
    /// ZeroMQ PUB endpoint publishing one JSON message per Result (nil: off).
    public var publish: String?
    public var useLateFrames: Bool
    /// Move a late agent's objects to the ego's time by their tracked speed (`fusion.motion_compensation`).
    public var motionCompensation: Bool
    /// Correct other agents' placements from the objects both detect (`fusion.pose_alignment`).
    public var poseAlignment: Bool
    /// Uplink budget shared between the agents with Control caps, bit/s (0: no caps).
    public var uplinkBudgetBitsPerSecond: Double
    /// Seconds between budget reallocations.
    public var controlInterval: Double
    /// Prometheus endpoint port (0: off) and host.
    public var metricsPort: Int
    public var metricsHost: String
    /// Live view (dashboard page and Foxglove WebSocket): port (0: off), host, access token
    /// (required unless the host is a loopback address), and the deadline its latency table counts misses against.
    public var livePort: Int
    public var liveHost: String
    public var liveToken: String?
    public var liveDeadlineMs: Double
    /// Region server of a fleet (nil: a standalone server).
    public var fleet: FleetSettings?

    /// `fleet:`: the registry (etcd), this server's region, and the endpoint agents reach it at.
    public struct FleetSettings: Sendable {
        /// etcd client URL (its HTTP/JSON gateway), e.g. http://127.0.0.1:2379.
        public var etcd: String
        /// The region of the map this server serves.
        public var region: String
        /// The endpoint other servers hand agents over to (as agents must write it).
        public var advertise: String
        /// The region map file; nil: read the map from the registry.
        public var regionsFile: String?
        public var prefix: String
        public var leaseTTLSeconds: Int
        /// Instance name shown in the registry (default: the host name).
        public var name: String?
    }

    /// Key files of a Curve server: its secret key and a folder of allowed agents' `.pub` files.
    public struct CurveFiles: Sendable {
        public var secretKey: String
        public var allowedKeys: String
    }

    public static func load(file: String) throws(ConfigError) -> ServerConfig {
        let root = try ConfigSection.load(file: file)
        let c = try ServerConfig(root)
        try root.finish()
        return c
    }

    public init(_ root: ConfigSection) throws(ConfigError) {
        endpoint = try endpointValue(root, "endpoint")
        let curve = try root.section("curve")
        if try curve.bool("enabled", default: true) {
            self.curve = CurveFiles(
                secretKey: curve.resolvePath(try curve.string("secret_key")),
                allowedKeys: curve.resolvePath(try curve.string("allowed_keys")))
        } else {
            self.curve = nil
            _ = try curve.optionalString("secret_key")
            _ = try curve.optionalString("allowed_keys")
        }
        let l = try root.section("limits")
        var limits = WireLimits()
        limits.maxMessageBytes = try l.int("max_message_bytes", default: limits.maxMessageBytes, in: 64...(1 << 30))
        limits.maxChannels = try l.int("max_channels", default: limits.maxChannels, in: 1...65535)
        limits.maxHeight = try l.int("max_height", default: limits.maxHeight, in: 1...65535)
        limits.maxWidth = try l.int("max_width", default: limits.maxWidth, in: 1...65535)
        limits.maxValues = try l.int("max_values", default: limits.maxValues, in: 1...(1 << 30))
        self.limits = limits
        socket = try socketOptions(try root.section("socket"))
        socket.maxMessageBytes = limits.maxMessageBytes * 2
        rejectLogInterval = try root.section("log").double("reject_interval_s", default: 5, in: 0...3600)
        let f = try root.section("fusion")
        model = try f.optionalString("model").map { f.resolvePath($0) }
        tickHz = try f.double("tick_hz", default: 100, in: 0.1...1000)
        windowMs = try f.double("window_ms", default: 150, in: 1...10_000)
        fusionMode = try f.string("mode", default: "attention")
        fusionThreads = try f.int("threads", default: 0, in: 0...256)
        motionCompensation = try f.bool("motion_compensation", default: true)
        poseAlignment = try f.bool("pose_alignment", default: false)
        guard ["attention", "max"].contains(fusionMode) else {
            throw ConfigError(file: f.file, key: f.keyPath("mode"), problem: "'\(fusionMode)' must be attention or max")
        }
        recordPath = try f.optionalString("record").map { f.resolvePath($0) }
        recordFlushSeconds = try f.double("record_flush_s", default: 1, in: 0.05...3600)
        jsonLines = try f.optionalString("json_lines").map { $0 == "-" ? "-" : f.resolvePath($0) }
        publish = try f.optionalString("publish")
        useLateFrames = try f.string("late_frames", default: "drop") == "use"
        guard ["drop", "use"].contains(try f.string("late_frames", default: "drop")) else {
            throw ConfigError(file: f.file, key: f.keyPath("late_frames"), problem: "must be drop or use")
        }
        let ctl = try root.section("control")
        uplinkBudgetBitsPerSecond = try ctl.double("uplink_budget_kbit_s", default: 0, in: 0...100_000_000) * 1000
        controlInterval = try ctl.double("interval_s", default: 2, in: 0.1...3600)
        if uplinkBudgetBitsPerSecond > 0, model == nil {
            throw ConfigError(
                file: ctl.file, key: ctl.keyPath("uplink_budget_kbit_s"),
                problem: "needs fusion.model (its rate-accuracy table)")
        }
        let fl = try root.section("fleet")
        let etcd = try fl.optionalString("etcd")
        let region = try fl.optionalString("region")
        let advertise = try fl.optionalString("advertise")
        let regions = try fl.optionalString("regions")
        let prefix = try fl.string("prefix", default: "/slimsplit/")
        let ttl = try fl.int("lease_ttl_s", default: 2, in: 1...3600)
        let name = try fl.optionalString("name")
        if let etcd, let region {
            let adv = advertise ?? endpoint
            guard adv.hasPrefix("tcp://") || adv.hasPrefix("ipc://"), !adv.contains("*"), !adv.contains("0.0.0.0")
            else {
                throw ConfigError(
                    file: fl.file, key: fl.keyPath("advertise"),
                    problem: "'\(adv)' must be an endpoint agents can connect to (tcp://host:port, no wildcard)")
            }
            fleet = FleetSettings(
                etcd: etcd, region: region, advertise: adv, regionsFile: regions.map { fl.resolvePath($0) },
                prefix: prefix, leaseTTLSeconds: ttl, name: name)
        } else {
            for k in ["etcd", "region", "advertise", "regions", "prefix", "lease_ttl_s", "name"] where fl.has(k) {
                throw ConfigError(
                    file: fl.file, key: fl.keyPath(k), problem: "a fleet needs both fleet.etcd and fleet.region")
            }
            fleet = nil
        }
        let m = try root.section("metrics")
        metricsPort = try m.int("port", default: 9464, in: 0...65535)
        metricsHost = try m.string("host", default: "0.0.0.0")
        let live = try root.section("live")
        livePort = try live.int("port", default: 0, in: 0...65535)
        liveHost = try live.string("host", default: "127.0.0.1")
        liveToken = try live.optionalString("token")
        liveDeadlineMs = try live.double("deadline_ms", default: 100, in: 1...60_000)
        if livePort != 0, !["127.0.0.1", "::1", "localhost"].contains(liveHost), (liveToken ?? "").isEmpty {
            throw ConfigError(
                file: live.file, key: live.keyPath("token"),
                problem:
                    "required when live.host (\(liveHost)) is not a loopback address: anyone who reaches it would see the session"
            )
        }
    }
}

/// `Configs/agent.yaml`. Every key is documented there and in docs/configuration.md.
public struct AgentConfig: Sendable {
    public var agentID: String
    public var server: String
    public var curve: CurveFiles?
    public var socket: SocketOptions
    public var synthetic: SyntheticSource
    /// Replay a recording through the model (nil: stream synthetic features).
    public var source: RecordingSource?
    /// Prometheus endpoint of the agent (port 0: off).
    public var metricsPort: Int
    public var metricsHost: String

    public struct RecordingSource: Sendable {
        public var recording: String
        /// The agent of the recording to replay (its topics /agents/<id>/...).
        public var agent: String
        public var model: String
        public var widthIndex: Int?
        public var bits: Int
        public var threshold: Double
        /// `source.payload: codebook`: residual-codebook indices instead of scalar codes (a
        /// deep-fusion model's; `bits` then does not apply).
        public var codebook = false
        public var loop: Bool
        /// Adapt width and bits to the measured uplink (deadline in seconds), nil: fixed.
        public var adaptDeadline: Double?
        /// Seconds from capture by which a frame's detections must be back (`deadline_ms`).
        public var deadline: Double = 0.1
        /// A live LiDAR instead of the recording (`source.kind: velodyne`); `recording` is then empty.
        public var velodyne: VelodyneSource?
    }

    /// A Velodyne sensor's UDP packet stream (or a capture of one), `source.kind: velodyne`.
    public struct VelodyneSource: Sendable {
        /// `udp://HOST:PORT` to listen on, or `pcap:FILE` to read a capture.
        public var listen: String
        public var lidarModel: VelodyneModel
        /// The sensor on the agent: offset (m) and heading (rad) in the agent's frame; `z` is its height above the ground.
        public var mountX: Double, mountY: Double, mountZ: Double, mountYaw: Double
        /// The agent's pose in the world frame (a roadside unit's place; fixed).
        public var poseX: Double, poseY: Double, poseYaw: Double
    }

    public struct CurveFiles: Sendable {
        public var serverKey: String
        public var secretKey: String
    }

    /// Synthetic feature maps: the stand-in source of the transport layer until the encoder
    /// pipeline produces real features.
    public struct SyntheticSource: Sendable {
        public var frames: Int
        public var rateHz: Double
        public var channels: Int
        public var height: Int
        public var width: Int
        public var bits: Int
        public var widthIndex: Int
        public var occupancy: Double
        public var mask: Bool
        public var lz4: Bool

        public init(
            frames: Int, rateHz: Double, channels: Int, height: Int, width: Int, bits: Int,
            widthIndex: Int, occupancy: Double, mask: Bool, lz4: Bool
        ) {
            self.frames = frames
            self.rateHz = rateHz
            self.channels = channels
            self.height = height
            self.width = width
            self.bits = bits
            self.widthIndex = widthIndex
            self.occupancy = occupancy
            self.mask = mask
            self.lz4 = lz4
        }
    }

    public static func load(file: String) throws(ConfigError) -> AgentConfig {
        let root = try ConfigSection.load(file: file)
        let c = try AgentConfig(root)
        try root.finish()
        return c
    }

    public init(_ root: ConfigSection) throws(ConfigError) {
        agentID = try root.string("agent_id")
        guard Identifier.isValid(agentID) else {
            throw ConfigError(
                file: root.file, key: "agent_id", problem: "'\(agentID)' must be 1-64 characters of A-Z a-z 0-9 . _ -")
        }
        server = try endpointValue(root, "server")
        let curve = try root.section("curve")
        if try curve.bool("enabled", default: true) {
            self.curve = CurveFiles(
                serverKey: curve.resolvePath(try curve.string("server_key")),
                secretKey: curve.resolvePath(try curve.string("secret_key")))
        } else {
            self.curve = nil
            _ = try curve.optionalString("server_key")
            _ = try curve.optionalString("secret_key")
        }
        socket = try socketOptions(try root.section("socket"))
        let am = try root.section("metrics")
        metricsPort = try am.int("port", default: 0, in: 0...65535)
        metricsHost = try am.string("host", default: "0.0.0.0")
        let src = try root.section("source")
        let kind = try src.string("kind", default: "recording")
        guard ["recording", "velodyne"].contains(kind) else {
            throw ConfigError(
                file: src.file, key: src.keyPath("kind"), problem: "'\(kind)' must be recording or velodyne")
        }
        var velodyne: VelodyneSource?
        if kind == "velodyne" {
            let listen = try src.string("listen", default: "udp://0.0.0.0:2368")
            guard listen.hasPrefix("udp://") || listen.hasPrefix("pcap:") else {
                throw ConfigError(
                    file: src.file, key: src.keyPath("listen"),
                    problem: "'\(listen)' must be udp://HOST:PORT or pcap:FILE")
            }
            let name = try src.string("lidar_model", default: "VLP-16")
            guard let lidarModel = VelodyneModel.named(name) else {
                throw ConfigError(
                    file: src.file, key: src.keyPath("lidar_model"),
                    problem: "'\(name)' is not one of \(VelodyneModel.allCases.map(\.rawValue).joined(separator: ", "))"
                )
            }
            let mount = try src.section("mount")
            let pose = try src.section("pose")
            let deg = Double.pi / 180
            velodyne = VelodyneSource(
                listen: listen.hasPrefix("pcap:") ? "pcap:" + src.resolvePath(String(listen.dropFirst(5))) : listen,
                lidarModel: lidarModel,
                mountX: try mount.double("x", default: 0, in: -100...100),
                mountY: try mount.double("y", default: 0, in: -100...100),
                mountZ: try mount.double("z", default: 1.8, in: 0...100),
                mountYaw: try mount.double("yaw_deg", default: 0, in: -360...360) * deg,
                poseX: try pose.double("x", default: 0, in: -1e7...1e7),
                poseY: try pose.double("y", default: 0, in: -1e7...1e7),
                poseYaw: try pose.double("yaw_deg", default: 0, in: -360...360) * deg)
        }
        if let rec = velodyne == nil ? try src.optionalString("recording") : "" {
            source = RecordingSource(
                recording: rec.isEmpty ? "" : src.resolvePath(rec),
                agent: try src.string("agent", default: agentID.replacingOccurrences(of: "-", with: "_")),
                model: src.resolvePath(try src.string("model")),
                widthIndex: try src.optionalInt("width_index", in: 0...15),
                bits: try src.int("bits", default: 8, in: 1...8),
                threshold: try src.double("threshold", default: 0, in: 0...1000),
                loop: try src.bool("loop", default: true),
                adaptDeadline: nil)
            let deadline = try src.double("deadline_ms", default: 100, in: 10...10_000) / 1000
            source!.deadline = deadline
            if try src.bool("adapt", default: false) { source!.adaptDeadline = deadline }
            source!.velodyne = velodyne
            let payload = try src.string("payload", default: MessagePayload.scalar.rawValue)
            guard let kind = MessagePayload(rawValue: payload) else {
                throw ConfigError(
                    file: src.file, key: src.keyPath("payload"), problem: "'\(payload)' must be \(MessagePayload.names)")
            }
            source!.codebook = kind == .codebook
        } else {
            source = nil
        }
        let s = try root.section("synthetic")
        synthetic = SyntheticSource(
            frames: try s.int("frames", default: 0, in: 0...Int(Int32.max)),
            rateHz: try s.double("rate_hz", default: 10, in: 0.01...10_000),
            channels: try s.int("channels", default: 64, in: 1...1024),
            height: try s.int("height", default: 32, in: 1...1024),
            width: try s.int("width", default: 32, in: 1...1024),
            bits: try s.int("bits", default: 8, in: 1...8),
            widthIndex: try s.int("width_index", default: 3, in: 0...3),
            occupancy: try s.double("occupancy", default: 0.3, in: 0...1),
            mask: try s.bool("mask", default: false),
            lz4: try s.bool("lz4", default: true))
    }
}

private func endpointValue(_ s: ConfigSection, _ key: String) throws(ConfigError) -> String {
    let v = try s.string(key)
    guard v.hasPrefix("tcp://") || v.hasPrefix("ipc://") else {
        throw ConfigError(file: s.file, key: s.keyPath(key), problem: "'\(v)' must be tcp://HOST:PORT or ipc:///PATH")
    }
    return v
}

private func socketOptions(_ s: ConfigSection) throws(ConfigError) -> SocketOptions {
    var o = SocketOptions()
    o.sendHWM = Int32(try s.int("send_hwm", default: Int(o.sendHWM), in: 1...100_000))
    o.receiveHWM = Int32(try s.int("receive_hwm", default: Int(o.receiveHWM), in: 1...100_000))
    o.heartbeatIntervalMs = Int32(try s.int("heartbeat_ms", default: Int(o.heartbeatIntervalMs), in: 10...600_000))
    o.heartbeatTimeoutMs = Int32(
        try s.int("heartbeat_timeout_ms", default: Int(o.heartbeatTimeoutMs), in: 10...600_000))
    o.reconnectMs = Int32(try s.int("reconnect_ms", default: Int(o.reconnectMs), in: 1...600_000))
    o.reconnectMaxMs = Int32(try s.int("reconnect_max_ms", default: Int(o.reconnectMaxMs), in: 1...600_000))
    o.inboundCapacity = try s.int("inbound_capacity", default: o.inboundCapacity, in: 1...1_000_000)
    return o
}
