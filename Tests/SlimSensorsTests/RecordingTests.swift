import Foundation
import SlimConfig
import SlimEngine
import TestSupport
import Testing

@testable import SlimSensors

let repo = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()
let mcapFixtures = repo.appendingPathComponent("Tests/Fixtures/mcap")

func json(_ name: String) throws -> [String: Any] {
    try JSONSerialization.jsonObject(with: Data(contentsOf: mcapFixtures.appendingPathComponent(name)))
        as! [String: Any]
}

func number(_ v: Any?) -> Double { (v as? NSNumber)?.doubleValue ?? .nan }

/// Reads every message; returns how many were delivered and the error, if any.
func readAll(_ path: String, _ each: (MCAPMessageView) -> Void = { _ in }) -> (Int, MCAPError?) {
    var n = 0
    do {
        try MCAPReader(path: path).forEachMessage { m in
            n += 1
            each(m)
            return true
        }
        return (n, nil)
    } catch { return (n, error) }
}

@Suite("Recordings written by other tools (mcap, mcap-ros2-support)")
struct ForeignRecordingTests {
    @Test("PointCloud2 in every real-world layout decodes to the right points")
    func pointCloudLayouts() throws {
        let expected = try json("pc2_layouts.json")["messages"] as! [[String: Any]]
        var decoded: [[SIMD4<Float>]] = []
        let (n, err) = readAll(mcapFixtures.appendingPathComponent("pc2_layouts.mcap").path) { m in
            var pts: [SIMD4<Float>] = []
            do { try PointCloud2.decode(m.data, into: &pts) } catch { Issue.record("\(error)") }
            decoded.append(pts)
        }
        #expect(err == nil)
        #expect(n == expected.count)
        for (i, e) in expected.enumerated() where i < decoded.count {
            let want = ((e["cloud"] as! [String: Any])["points"] as! [[Any]]).map { p in
                SIMD4(
                    Float(number(p[0])), Float(number(p[1])), Float(number(p[2])),
                    p[3] is NSNull ? 0 : Float(number(p[3])))
            }
            #expect(decoded[i] == want, "layout \(e["layout"]!): \(e["description"]!)")
        }
    }

    @Test(
        "unchunked files, uncompressed and zstd chunks, and the official writer's defaults read",
        arguments: ["unchunked", "uncompressed_chunks", "zstd_chunks", "writer_defaults"])
    func variants(_ name: String) throws {
        let e = try json("\(name).json")
        let (n, err) = readAll(mcapFixtures.appendingPathComponent("\(name).mcap").path)
        if let want = e["expect_error"] as? String {
            #expect(
                err?.problem.contains("unsupported compression 'zstd'") == true,
                "\(want): got \(String(describing: err))")
            #expect(n == e["messages_before_error"] as! Int)
        } else {
            #expect(err == nil)
            #expect(n == e["message_count"] as! Int)
        }
    }

    @Test(
        "a damaged file yields what was valid before the damage, then an error naming the record and offset",
        arguments: [
            "truncated_mid_chunk.mcap", "corrupt_chunk_crc.mcap", "bad_magic.mcap", "truncated_header.mcap",
            "garbage_record_length.mcap",
        ])
    func corruption(_ file: String) throws {
        let c = (try json("corruption.json")["cases"] as! [String: Any])[file] as! [String: Any]
        let (n, err) = readAll(mcapFixtures.appendingPathComponent(file).path)
        #expect(n == c["messages_before_error"] as! Int)
        #expect(err != nil)
        #expect(err?.offset == c["bad_record_offset"] as? Int, "\(String(describing: err))")
        #expect(err?.description.contains(file) == true)
    }

    @Test("PoseStamped and Detection3DArray written by mcap-ros2-support decode field for field")
    func ros2Types() throws {
        let e = try json("ros2_types.json")["messages"] as! [[String: Any]]
        var poses: [PoseStamped] = []
        var dets: [Detection3DArray] = []
        let (_, err) = readAll(mcapFixtures.appendingPathComponent("ros2_types.mcap").path) { m in
            if m.schema?.name == PoseStamped.typeName, let p = try? PoseStamped.decode(m.data) { poses.append(p) }
            if m.schema?.name == Detection3DArray.typeName, let d = try? Detection3DArray.decode(m.data) {
                dets.append(d)
            }
        }
        #expect(err == nil)
        let pe = e.first { $0["type"] as? String == "PoseStamped" }!
        let pos = (pe["pose"] as! [String: Any])["position"] as! [String: Any]
        #expect(poses.first?.pose.position == SIMD3(number(pos["x"]), number(pos["y"]), number(pos["z"])))
        #expect(poses.first?.header.frameID == (pe["header"] as! [String: Any])["frame_id"] as? String)
        let de = (e.first { $0["type"] as? String == "Detection3DArray" }!["detections"] as! [[String: Any]])
        #expect(dets.first?.detections.count == de.count)
        for (got, want) in zip(dets.first?.detections ?? [], de) {
            let size = (want["bbox"] as! [String: Any])["size"] as! [String: Any]
            #expect(got.size == SIMD3(number(size["x"]), number(size["y"]), number(size["z"])))
            #expect(got.id == want["id"] as? String)
            let hyp = ((want["results"] as! [[String: Any]])[0]["hypothesis"] as! [String: Any])
            #expect(got.classID == hyp["class_id"] as? String)
            #expect(got.score == number(hyp["score"]))
        }
    }
}

func sampleScene(duration: Double = 0.5) throws -> SceneConfig {
    var c = try SceneConfig.load(file: repo.appendingPathComponent("Configs/scenes/sample.yaml").path)
    c.duration = duration
    return c
}

@Suite("Recording to a full disk or an unwritable path")
struct RecordingFailureTests {
    @Test("an unwritable path is an error naming the file and the reason")
    func unwritable() {
        #expect {
            _ = try MCAPWriter(path: "/nonexistent-dir/x.mcap")
        } throws: { e in
            "\(e)".contains("/nonexistent-dir/x.mcap") && "\(e)".contains("No such file or directory")
        }
    }

    /// /dev/full accepts the open and refuses every write with ENOSPC, as a full disk does.
    @Test(
        "a full disk is an error naming the file and ENOSPC",
        .enabled(if: FileManager.default.fileExists(atPath: "/dev/full"), "no /dev/full on this system"))
    func diskFull() throws {
        #expect {
            _ = try RecordingWriter(path: "/dev/full")
        } throws: { e in
            "\(e)".contains("/dev/full") && "\(e)".contains("No space left on device")
        }
    }
}

@Suite("Simulator, recordings, featurizer, dataset export")
struct SimulatorTests {
    /// The demo, the eval fixture and the end-to-end tests read the committed sample; when the
    /// simulator changes, the sample must be remade with it (Configs/scenes/sample.yaml says how).
    @Test("the committed sample is what `record --scene Configs/scenes/sample.yaml --seed 2` writes")
    func sampleIsCurrent() throws {
        var sim = Simulator(config: try sampleScene(duration: 3), seed: 2)
        let path = NSTemporaryDirectory() + "slimsplit-sample-\(getpid()).mcap"
        defer { try? FileManager.default.removeItem(atPath: path) }
        try RecordingWriter.record(&sim, to: path)
        let made = try Data(contentsOf: URL(fileURLWithPath: path))
        let committed = try Data(contentsOf: repo.appendingPathComponent("Tests/Fixtures/sample.mcap"))
        #expect(made.count == committed.count && made == committed,
                "Tests/Fixtures/sample.mcap (\(committed.count) B) differs from a fresh recording (\(made.count) B): remake it")
    }

    @Test("a recording reads back: every topic, points, poses, ground truth")
    func recordingRoundTrip() throws {
        var sim = Simulator(config: try sampleScene(), seed: 3)
        let path = NSTemporaryDirectory() + "slimsplit-rec-\(getpid()).mcap"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let w = try RecordingWriter(path: path)
        var frames: [SimFrame] = []
        for _ in 0..<sim.frameCount {
            let f = sim.next()
            frames.append(f)
            try w.write(f)
        }
        try w.finish()
        #expect(frames.count == 5)
        let summary = try RecordingSummary.of(path)
        #expect(summary.topics.count == 3 * 3 + 2)
        #expect(summary.topics.allSatisfy { $0.count == 5 })
        var clouds = 0
        let (n, err) = readAll(path) { m in
            guard let (agent, kind) = Topics.parseAgent(m.channel.topic) else { return }
            let fi = frames.firstIndex { $0.timeNs == m.logTime }!
            let a = frames[fi].agents.first { $0.id == agent }!
            if kind == "lidar" {
                var pts: [SIMD4<Float>] = []
                _ = try? PointCloud2.decode(m.data, into: &pts)
                #expect(pts == a.points)
                clouds += 1
            } else if kind == "pose" {
                #expect((try? PoseStamped.decode(m.data))?.pose == a.pose)
            }
        }
        #expect(err == nil)
        #expect(n == 55 && clouds == 15)
        // Agents see vehicles: some ground-truth objects have points from each vehicle agent.
        #expect(frames[0].hits.allSatisfy { $0.reduce(0, +) > 0 })
    }

    @Test("the simulator is deterministic for a seed")
    func deterministic() throws {
        var a = Simulator(config: try sampleScene(), seed: 11)
        var b = Simulator(config: try sampleScene(), seed: 11)
        var c = Simulator(config: try sampleScene(), seed: 12)
        let fa = a.next()
        let fb = b.next()
        let fc = c.next()
        #expect(fa.agents.map(\.points) == fb.agents.map(\.points))
        #expect(fa.objects == fb.objects)
        #expect(fa.agents.map(\.points) != fc.agents.map(\.points))
    }

    @Test("agents.roadside_unit_yaw_deg turns the roadside LiDAR and nothing else")
    func roadsideYaw() throws {
        func rsuYaw(_ deg: Double?, seed: UInt64) throws -> (Double, [SceneBox]) {
            var c = try sampleScene()
            c.roadsideUnitYawDeg = deg
            var sim = Simulator(config: c, seed: seed)
            let f = sim.next()
            let p = f.agents.first { $0.id == "rsu_1" }!.pose
            return (p.yaw, f.objects)
        }
        let (layout, objects) = try rsuYaw(nil, seed: 7)
        #expect(abs(layout + 3 * .pi / 4) < 1e-9)  // the sample is an intersection: the corner's diagonal
        let (fixed, objects30) = try rsuYaw(30, seed: 7)
        #expect(abs(fixed - .pi / 6) < 1e-9)
        #expect(objects30 == objects)
        let r7 = try rsuYaw(.nan, seed: 7)
        let r8 = try rsuYaw(.nan, seed: 8)
        #expect(r7.0 != r8.0 && abs(r7.0) <= .pi && abs(r8.0) <= .pi)
        #expect(r7.1 == objects)
    }

    @Test("featurizer cells and channels")
    func featurizer() {
        let f = BEVFeaturizer()
        let out = FloatTensor(height: 128, width: 128, channels: 8)
        // Sensor 2 m above ground: z = -2 is the ground; cell of (x 0.25, y 0.25) is row 64, col 64.
        let pts: [SIMD4<Float>] = [
            SIMD4(0.25, 0.25, -2.0, 0.2), SIMD4(0.3, 0.2, -0.5, 0.6), SIMD4(-31.9, -31.9, -1.0, 1),
            SIMD4(40, 0, -2, 1), SIMD4(0, 0, 10, 1),
        ]  // the last two are outside the grid
        pts.withUnsafeBufferPointer { f.featurize($0, sensorHeight: 2, into: out) }
        let c = (64 * 128 + 64) * 8
        #expect(out.storage[c] == 1)
        #expect(abs(out.storage[c + 1] - log1p(2)) < 1e-6)
        #expect(abs(out.storage[c + 2] - 1.5 / 4.5) < 1e-6)
        #expect(abs(out.storage[c + 3] - 0.75 / 4.5) < 1e-6)
        #expect(abs(out.storage[c + 6] - 0.4) < 1e-6)
        #expect(out.storage[c + 7] == 0.5)
        #expect(out.storage[0] == 1)  // (-31.9, -31.9) → row 0, col 0
        #expect(out.values.enumerated().filter { $0.offset % 8 == 0 && $0.element != 0 }.count == 2)
    }

    @Test("dataset export writes shards with the documented keys and shapes")
    func export() async throws {
        var sim = Simulator(config: try sampleScene(duration: 0.3), seed: 4)
        let dir = NSTemporaryDirectory() + "slimsplit-ds-\(getpid())"
        let path = dir + ".mcap"
        defer {
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: dir)
        }
        let w = try RecordingWriter(path: path)
        for _ in 0..<sim.frameCount { try w.write(sim.next()) }
        try w.finish()
        let shards = try DatasetExporter().export(recording: path, to: dir)
        #expect(shards.count == 1)
        let st = try Safetensors(contentsOf: shards[0])
        #expect(st.tensors["bev"]?.shape == [9, 8, 128, 128])
        #expect(st.tensors["bev"]?.dtype == .f16)
        #expect(st.tensors["pose"]?.shape == [9, 7])
        #expect(st.tensors["boxes_world"]?.shape[1] == 8)
        #expect(st.tensors["boxes_agent"]?.shape[1] == 10)
        #expect(st.metadata["agents"] == "[\"car_1\",\"car_2\",\"rsu_1\"]")
        // And with the Python tools, when they are installed (CI installs them).
        if let r = await python([
            "-c",
            "import sys; from safetensors.numpy import load_file; d = load_file(sys.argv[1]); print(d['bev'].shape, d['boxes_agent'].shape)",
            shards[0],
        ]) {
            #expect(r.status == 0, "\(r.output)")
            #expect(r.output.contains("(9, 8, 128, 128)"))
        } else {
            print("SKIP: python3 with safetensors not available; the shard was not loaded in Python")
        }
    }

    @Test(
        "the official mcap and mcap-ros2-support read and decode a SlimSplit recording",
        arguments: MCAPCompression.allCases)
    func officialReader(_ compression: MCAPCompression) async throws {
        var sim = Simulator(config: try sampleScene(duration: 0.5), seed: 5)
        let path = NSTemporaryDirectory() + "slimsplit-check-\(getpid())-\(compression).mcap"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let w = try RecordingWriter(path: path, compression: compression)
        var written = 0
        for _ in 0..<sim.frameCount {
            try w.write(sim.next())
            written += 1
        }
        try w.finish()
        // SlimSplit's own reader takes it back, every frame.
        let back = try RecordingFrames(path: path)
        #expect(back.frames.count == written && back.undecodable == 0)
        guard
            let r = await python([
                repo.appendingPathComponent("Tests/interop/check_recording.py").path, path, "--agents", "3", "--json",
                "--compression", compression.rawValue,
            ])
        else {
            print(
                "SKIP: python3 with mcap and mcap-ros2-support not available; the recording was not checked with them")
            return
        }
        #expect(r.status == 0, "\(r.output)")
        #expect(r.output.contains("\"problems\": []"))
    }
}

/// Runs python3 with `args`; nil if python3 or its packages (checked by the caller's script) are
/// missing. Polled, not waited for: a blocked thread would starve the socket tests beside it.
func python(_ args: [String]) async -> (status: Int32, output: String)? {
    guard await pythonHas("mcap, mcap_ros2, safetensors, numpy") else { return nil }
    return await runProcess(["python3"] + args)
}
