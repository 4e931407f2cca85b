"""Self-tests for the interop tooling (plain unittest, no Swift needed).

    .venv/bin/python -m unittest discover -s Tests/interop -v

* the committed fixtures in Tests/Fixtures/mcap are exactly what
  make_mcap_fixtures.py produces (when the pinned package versions are
  installed; otherwise that comparison is skipped) and they read back as the
  JSON files say;
* check_recording.py accepts the SlimSplit-like sample recording and flags
  each kind of broken recording.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest
from importlib.metadata import PackageNotFoundError, version

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import check_recording  # noqa: E402
import make_mcap_fixtures as fx  # noqa: E402
import msg_definitions as defs  # noqa: E402
from mcap.writer import CompressionType  # noqa: E402

FIXTURES = os.path.normpath(os.path.join(HERE, "..", "Fixtures", "mcap"))


def pinned_versions_installed() -> bool:
    with open(os.path.join(HERE, "requirements.txt"), encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, want = line.split("==")
            try:
                if version(name) != want:
                    return False
            except PackageNotFoundError:
                return False
    return True


class FixtureTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="mcap-fixtures-")
        with contextlib.redirect_stdout(io.StringIO()):
            fx.main(["--out", cls.tmp])  # also runs fx.verify on the fresh output

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_committed_fixtures_read_back(self):
        fx.verify(FIXTURES)

    def test_regeneration_is_byte_identical(self):
        if not pinned_versions_installed():
            self.skipTest("installed mcap/lz4/zstd versions differ from requirements.txt")
        fresh = sorted(os.listdir(self.tmp))
        self.assertEqual(fresh, sorted(os.listdir(FIXTURES)))
        for name in fresh:
            with open(os.path.join(self.tmp, name), "rb") as a, \
                    open(os.path.join(FIXTURES, name), "rb") as b:
                self.assertEqual(a.read(), b.read(), name)

    def test_definitions_match_schema_records(self):
        reader, summary, _ = fx.read_all(os.path.join(FIXTURES, "ros2_types.mcap"))
        got = {s.name: s.data.decode() for s in summary.schemas.values()}
        self.assertEqual(got[defs.POSE_STAMPED], defs.DEFINITIONS[defs.POSE_STAMPED])
        self.assertEqual(got[defs.DETECTION3D_ARRAY], defs.DEFINITIONS[defs.DETECTION3D_ARRAY])


class CheckRecordingTests(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="check-recording-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def write(self, msgs, name="rec.mcap", raw=None, **kw):
        path = os.path.join(self.tmp, name)
        if raw is not None:
            with open(path, "wb") as f:
                fx.write_raw(f, msgs, **raw)
        else:
            fx.write_ros2(path, msgs, kw.pop("compression", CompressionType.LZ4),
                          chunk_size=kw.pop("chunk_size", 16 * 1024))
        return path

    def problems(self, path, **kw):
        return check_recording.check(path, **kw)["problems"]

    def assertProblem(self, path, fragment, **kw):
        problems = self.problems(path, **kw)
        self.assertTrue(any(fragment in p for p in problems), (fragment, problems))

    def test_sample_recording_is_clean(self):
        path = os.path.join(FIXTURES, "sample_recording.mcap")
        report = check_recording.check(path, agents=2)
        self.assertEqual(report["problems"], [])
        self.assertTrue(report["ok"])
        self.assertEqual(report["message_count"], 80)
        self.assertEqual(report["agents"], ["a", "b"])
        self.assertEqual(len(report["topics"]), 8)
        for st in report["topics"].values():
            self.assertEqual(st["count"], 10)
            self.assertAlmostEqual(st["rate_hz"], 10.0)

    def test_cli_exit_codes_and_json(self):
        script = os.path.join(HERE, "check_recording.py")
        path = os.path.join(FIXTURES, "sample_recording.mcap")
        out = subprocess.run([sys.executable, script, path, "--agents", "2", "--json"],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        report = json.loads(out.stdout)
        self.assertTrue(report["ok"])
        bad = subprocess.run([sys.executable, script, path, "--agents", "3"],
                             capture_output=True, text=True)
        self.assertEqual(bad.returncode, 1)
        self.assertIn("PROBLEM agents", bad.stdout)

    def test_wrong_agent_count(self):
        self.assertProblem(os.path.join(FIXTURES, "sample_recording.mcap"), "agents:", agents=3)

    def test_corrupt_files(self):
        for name, fragment in (("corrupt_chunk_crc.mcap", "crc"),
                               ("truncated_mid_chunk.mcap", "trailing magic"),
                               ("bad_magic.mcap", "InvalidMagic"),
                               ("truncated_header.mcap", "read:"),
                               ("garbage_record_length.mcap", "RecordLengthLimitExceeded")):
            with self.subTest(name=name):
                self.assertProblem(os.path.join(FIXTURES, name), fragment)

    def test_non_unit_quaternion(self):
        msgs = fx.sample_recording_messages(frames=2)
        for m in msgs:
            if m.topic == "/agents/a/pose":
                m.ros["pose"]["orientation"] = {"x": 0.0, "y": 0.0, "z": 0.0, "w": 0.5}
        self.assertProblem(self.write(msgs), "not a unit quaternion")

    def test_bad_bbox_size(self):
        msgs = fx.sample_recording_messages(frames=2)
        for m in msgs:
            if m.topic == "/ground_truth/objects":
                m.ros["detections"][1]["bbox"]["size"]["y"] = 0.0
        self.assertProblem(self.write(msgs), "bbox size")

    def test_unknown_topic_and_wrong_schema(self):
        msgs = fx.sample_recording_messages(frames=2)
        for m in msgs:
            if m.topic == "/agents/b/pose_measured":
                m.topic = "/agents/b/odom"
            if m.topic == "/fusion/detections":
                m.topic = "/agents/b/lidar_objects"
        path = self.write(msgs)
        self.assertProblem(path, "is not a SlimSplit topic")
        st = fx.stamp(1, 0)
        wrong = [fx.pose_msg("/agents/a/lidar", st, "map", (0, 0, 0), (0, 0, 0, 1))]
        self.assertProblem(self.write(wrong, "wrong.mcap"), "expected 'sensor_msgs/msg/PointCloud2'")

    def test_decreasing_log_time(self):
        msgs = fx.sample_recording_messages(frames=3)
        lidar = [m for m in msgs if m.topic == "/agents/a/lidar"]
        lidar[2].log_time = lidar[1].log_time - 1
        lidar[2].publish_time = lidar[2].log_time
        self.assertProblem(self.write(msgs), "log_time")

    def test_cloud_without_intensity_and_bad_length(self):
        st = fx.stamp(10, 0)
        no_i = fx.build_cloud(fx.POINTS, [fx.field("x", 0, fx.FLOAT32), fx.field("y", 4, fx.FLOAT32),
                                          fx.field("z", 8, fx.FLOAT32)], 12)
        short = fx.xyzi_cloud(fx.POINTS)
        short["data"] = short["data"][:-4]
        empty = fx.xyzi_cloud([])
        empty["width"] = 0
        msgs = [fx.pc2_msg("/agents/a/lidar", fx.stamp(10, k), "l", c, [])
                for k, c in enumerate((no_i, short, empty))]
        path = self.write(msgs)
        self.assertProblem(path, "no 'intensity' field")
        self.assertProblem(path, "len(data)")
        self.assertProblem(path, "empty cloud")

    def test_missing_summary_parts_and_compression(self):
        msgs = fx.sample_recording_messages(frames=2)
        self.assertProblem(self.write(msgs, "nostats.mcap",
                                      raw=dict(use_statistics=False,
                                               compression=CompressionType.LZ4)),
                           "no Statistics record")
        self.assertProblem(self.write(msgs, "unchunked.mcap",
                                      raw=dict(use_chunking=False,
                                               compression=CompressionType.NONE)),
                           "no Chunk Index records")
        self.assertProblem(self.write(msgs, "zstd.mcap", compression=CompressionType.ZSTD),
                           "expected 'lz4'")
        self.assertEqual(self.problems(self.write(msgs, "zstd2.mcap",
                                                  compression=CompressionType.ZSTD),
                                       compression="any"), [])


if __name__ == "__main__":
    unittest.main()
