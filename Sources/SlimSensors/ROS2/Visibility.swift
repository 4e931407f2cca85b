/// slimsplit_msgs/msg/Visibility: how many LiDAR points of each agent hit each ground-truth
/// object in one frame (the simulator's ground truth of who sees what).
public struct Visibility: Sendable, Equatable {
    public static let typeName = "slimsplit_msgs/msg/Visibility"
    public static let definition = """
        builtin_interfaces/Time stamp
        string[] agent_ids
        uint32[] track_ids
        uint32[] point_counts

        ================================================================================
        MSG: builtin_interfaces/Time
        int32 sec
        uint32 nanosec

        """

    public var stamp: RosTime
    public var agentIDs: [String]
    public var trackIDs: [UInt32]
    /// Row-major [agent][track].
    public var pointCounts: [UInt32]

    public init(stamp: RosTime, agentIDs: [String], trackIDs: [UInt32], pointCounts: [UInt32]) {
        self.stamp = stamp
        self.agentIDs = agentIDs
        self.trackIDs = trackIDs
        self.pointCounts = pointCounts
    }

    public func encoded() -> [UInt8] {
        var w = CDRWriter()
        w.put(stamp.sec)
        w.put(stamp.nanosec)
        w.put(UInt32(agentIDs.count))
        for a in agentIDs { w.string(a) }
        w.put(UInt32(trackIDs.count))
        for t in trackIDs { w.put(t) }
        w.put(UInt32(pointCounts.count))
        for c in pointCounts { w.put(c) }
        return w.bytes
    }

    public static func decode(_ data: UnsafeRawBufferPointer) throws(CDRError) -> Visibility {
        var r = try CDRReader(data, type: typeName)
        let stamp = RosTime(sec: try r.get(Int32.self), nanosec: try r.get(UInt32.self))
        var agents: [String] = []
        for _ in 0..<(try r.count(minElementSize: 5)) { agents.append(try r.string()) }
        var tracks: [UInt32] = []
        for _ in 0..<(try r.count(minElementSize: 4)) { tracks.append(try r.get(UInt32.self)) }
        var counts: [UInt32] = []
        for _ in 0..<(try r.count(minElementSize: 4)) { counts.append(try r.get(UInt32.self)) }
        guard counts.count == agents.count * tracks.count else {
            throw r.fail("point_counts has \(counts.count) values for \(agents.count)×\(tracks.count)")
        }
        return Visibility(stamp: stamp, agentIDs: agents, trackIDs: tracks, pointCounts: counts)
    }
}
