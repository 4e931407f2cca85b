"""ONNX Runtime, a peer no one here wrote, on the shipped model's agent (plain unittest, no Swift).

    .venv/bin/python -m unittest discover -s Tests/interop -v

Models/slimsplit-deep-agent-int8.onnx (training/export_deep_onnx.py: the deep-fusion agent's whole
int8 network, QLinearConv and Conv) run by the installed ONNX Runtime on the BEV grid of
Tests/Fixtures/engine/deep_agent_ort.safetensors gives exactly the fixture's backbone and head codes,
which the engine matches on every kernel path (DeepParityTests, KernelPathTests). So engine and
ONNX Runtime agree on the graph, and the fixture is not stale for this ONNX Runtime version.
"""

from __future__ import annotations

import os
import unittest

import numpy as np
from safetensors.numpy import load_file

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODEL = os.path.join(ROOT, "Models", "slimsplit-deep-agent-int8.onnx")
FIXTURE = os.path.join(ROOT, "Tests", "Fixtures", "engine", "deep_agent_ort.safetensors")

try:
    import onnxruntime as ort
except ImportError:  # scripts/test installs it (Tests/interop/requirements.txt)
    ort = None


@unittest.skipIf(ort is None, "onnxruntime is not installed (scripts/test installs it)")
class DeepAgentTests(unittest.TestCase):
    def test_codes_equal_the_fixture(self):
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        s = ort.InferenceSession(MODEL, so, providers=["CPUExecutionProvider"])
        fx = load_file(FIXTURE)
        q, qp = fx["input_q"], fx["input_qparams"]
        x = ((q.astype(np.float32) - qp[1]) * qp[0]).astype(np.float32)
        self.assertGreater(int(np.count_nonzero(q != int(qp[1]))), 1000, "the fixture's grid is empty")
        got = dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: x})))
        backbone = next(n for n in got if n.startswith("deep.agent.backbone.") and n.endswith("_q"))
        for want, name in (("backbone_q", backbone), ("head_q", "deep.agent.head.shared.int8_q")):
            differ = int(np.count_nonzero(got[name] != fx[want]))
            self.assertEqual(differ, 0, f"{want}: {differ} of {fx[want].size} codes differ (onnxruntime {ort.__version__})")
        for n in ("heatmap", "offset", "size", "yaw"):
            w = fx[f"head.{n}"]
            err = float(np.abs(got[n] - w).max() / max(float(w.max() - w.min()), 1e-6))
            self.assertLessEqual(err, 1e-4, f"own head {n}")


if __name__ == "__main__":
    unittest.main()
