/// JSON Schemas of the live channels, sent in `advertise` (Foxglove validates nothing with them,
/// but a client learns the fields from them).
enum Schemas {
    static let vector3 = #"{"type":"object","properties":{"x":{"type":"number"},"y":{"type":"number"},"z":{"type":"number"}}}"#
    static let quaternion =
        #"{"type":"object","properties":{"x":{"type":"number"},"y":{"type":"number"},"z":{"type":"number"},"w":{"type":"number"}}}"#
    static let time = #"{"type":"object","properties":{"sec":{"type":"integer"},"nsec":{"type":"integer"}}}"#
    static let color =
        #"{"type":"object","properties":{"r":{"type":"number"},"g":{"type":"number"},"b":{"type":"number"},"a":{"type":"number"}}}"#
    static let pose = #"{"type":"object","properties":{"position":"# + vector3 + #","orientation":"# + quaternion + "}}"

    /// The parts of foxglove.SceneUpdate this server fills: entities of cubes, arrows, lines, texts.
    static let sceneUpdate = """
        {"title":"foxglove.SceneUpdate","type":"object","properties":{\
        "deletions":{"type":"array","items":{"type":"object"}},\
        "entities":{"type":"array","items":{"type":"object","properties":{\
        "timestamp":\(time),"frame_id":{"type":"string"},"id":{"type":"string"},"lifetime":\(time),\
        "frame_locked":{"type":"boolean"},\
        "metadata":{"type":"array","items":{"type":"object","properties":{"key":{"type":"string"},"value":{"type":"string"}}}},\
        "cubes":{"type":"array","items":{"type":"object","properties":{\
        "pose":\(pose),"size":\(vector3),\
        "color":\(color)}}},\
        "arrows":{"type":"array","items":{"type":"object","properties":{"pose":\(pose),"shaft_length":{"type":"number"},\
        "shaft_diameter":{"type":"number"},"head_length":{"type":"number"},"head_diameter":{"type":"number"},"color":\(color)}}},\
        "lines":{"type":"array","items":{"type":"object","properties":{"type":{"type":"integer"},"pose":\(pose),\
        "thickness":{"type":"number"},"scale_invariant":{"type":"boolean"},"points":{"type":"array","items":\(vector3)},"color":\(color)}}},\
        "texts":{"type":"array","items":{"type":"object","properties":{"pose":\(pose),"billboard":{"type":"boolean"},\
        "font_size":{"type":"number"},"scale_invariant":{"type":"boolean"},"color":\(color),"text":{"type":"string"}}}}}}}}}
        """

    static let agentStates = """
        {"title":"slimsplit.AgentStates","type":"object","properties":{"deadline_ms":{"type":"number"},\
        "agents":{"type":"array","items":{"type":"object","properties":{\
        "id":{"type":"string"},"x":{"type":"number"},"y":{"type":"number"},"yaw":{"type":"number"},\
        "range_m":{"type":"number"},"width":{"type":"number"},"bits":{"type":"integer"},\
        "frames":{"type":"integer"},"kb_per_frame":{"type":"number"},"rejected":{"type":"integer"},\
        "latency_p50_ms":{"type":"number"},"latency_p99_ms":{"type":"number"},"deadline_misses":{"type":"integer"}}}}}}
        """
}
