"""Tests of the training-side tools and of the committed engine fixtures.

    /work/venv-train/bin/python -m unittest discover -s training/tests -v
"""

from __future__ import annotations

import glob
import json
import math
import sys
import tempfile
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "training"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.numpy import load_file  # noqa: E402

from slimsplit_train.arch import SlimNet, active_channels, load_arch  # noqa: E402
from slimsplit_train.data import bev_input  # noqa: E402
from slimsplit_train.model_io import float_tensors, load_model, load_net, save_model  # noqa: E402
from slimsplit_train.quantize import (  # noqa: E402
    fold_bn, int8_chain_ref, qlinearconv_ref, qparams_from_range, quantize_net, quantize_tensor)
from slimsplit_train.st_write import save_file  # noqa: E402

FIX = ROOT / "Tests" / "Fixtures" / "engine"
YAML = ROOT / "Configs" / "models" / "ref-encoder.yaml"
torch.set_num_threads(1)


class ArchTests(unittest.TestCase):
    def test_active_channels(self):
        self.assertEqual([active_channels(w, 32) for w in (0.25, 0.5, 0.75, 1.0)], [8, 16, 24, 32])
        self.assertEqual(active_channels(0.1, 30), 3)  # math.ceil(0.1 * 30) would be 4
        self.assertEqual(active_channels(0.3, 10), 3)
        self.assertEqual(active_channels(0.33, 10), 4)

    def test_yaml(self):
        arch = load_arch(YAML)
        self.assertEqual([l["name"] for l in arch["layers"]], ["conv1", "conv2", "conv3", "conv4", "conv5"])
        self.assertIsInstance(arch["layers"][0]["bn_eps"], float)
        self.assertFalse(arch["layers"][0]["slim_in"])
        self.assertIsNone(arch["layers"][4]["activation"])

    def test_slimming_uses_leading_channels(self):
        arch = load_arch(YAML)
        net = SlimNet(arch)
        x = bev_input(1, 32, 32)
        with torch.no_grad():
            conv = net.layers["conv1"]
            y = conv(x, 0)
            ref = F.relu(F.batch_norm(F.conv2d(x, conv.weight[:8], conv.bias[:8], 2, 1), conv.bn[0].running_mean,
                                      conv.bn[0].running_var, conv.bn[0].weight, conv.bn[0].bias, False, 0.0, 1e-5))
        self.assertEqual(tuple(y.shape), (1, 8, 16, 16))
        torch.testing.assert_close(y, ref)


class QuantTests(unittest.TestCase):
    def setUp(self):
        torch.manual_seed(0)
        self.arch = load_arch(YAML)
        self.net = SlimNet(self.arch)
        with torch.no_grad():
            for layer in self.net.layers.values():
                for bn in layer.bn:
                    bn.running_mean.uniform_(-0.5, 0.5)
                    bn.running_var.uniform_(0.5, 2.0)
                    bn.weight.uniform_(0.5, 1.5)
                    bn.bias.uniform_(-0.2, 0.2)

    def test_fold_bn(self):
        x = torch.randn(1, 32, 9, 7)
        for i in range(4):
            w, b = fold_bn(self.net, "conv2", i)
            layer = self.net.layers["conv2"]
            ci = w.shape[1]
            with torch.no_grad():
                ref = layer(x[:, :ci], i)
                y = F.relu(F.conv2d(x[:, :ci], torch.from_numpy(w), torch.from_numpy(b), 1, 1))
            torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)

    def test_qparams(self):
        s, zp = qparams_from_range(0.0, 2.55)
        self.assertEqual(zp, 0.0)
        self.assertFalse(np.signbit(zp))
        self.assertAlmostEqual(float(s), 0.01, places=7)
        s, zp = qparams_from_range(-1.0, 3.0)
        self.assertEqual(zp, 64.0)  # round(1 / (4/255)) = round(63.75)
        s, zp = qparams_from_range(0.0, 0.0)
        self.assertEqual((s, zp), (1.0, 0.0))

    def test_quantize_tensor_half_even(self):
        q = quantize_tensor(np.array([0.5, 1.5, 2.5, -3.0, 300.0], np.float32), np.array([1.0, 0.0], np.float32))
        self.assertEqual(q.tolist(), [0, 2, 2, 0, 255])

    def test_model_roundtrip_and_int8_accuracy(self):
        calib = [bev_input(k, 64, 64) for k in range(2)]
        tensors = float_tensors(self.net)
        tensors.update(quantize_net(self.net, calib))
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / "m.safetensors"
            save_model(path, self.arch, tensors)
            meta = safe_open(str(path), "numpy").metadata()
            self.assertEqual(meta["format"], "slimsplit-model")
            self.assertEqual(meta["format_version"], "1")
            self.assertEqual(json.loads(meta["architecture"]), self.arch)
            net2, arch2, t2 = load_net(path)
        for k in tensors:
            np.testing.assert_array_equal(tensors[k], t2[k])
        x = bev_input(9, 64, 64)
        for i in range(4):
            xq = quantize_tensor(x.numpy(), t2[f"input.int8.{i}.qparams"])
            yq = int8_chain_ref(arch2, t2, i, xq)["conv5"]
            qp = t2[f"conv5.int8.{i}.qparams"]
            deq = (yq.astype(np.float32) - qp[1]) * qp[0]
            with torch.no_grad():
                yf = net2(x, i).numpy()
            self.assertLess(np.linalg.norm(deq - yf) / np.linalg.norm(yf), 0.1)

    def test_deterministic_writer(self):
        t = {"b": np.arange(3, dtype=np.int8), "a": np.ones((2, 2), np.float32), "c": np.arange(5, dtype=np.int32)}
        with tempfile.TemporaryDirectory() as d:
            p1, p2 = Path(d) / "1", Path(d) / "2"
            save_file(t, p1, {"k": "v"})
            save_file(dict(reversed(list(t.items()))), p2, {"k": "v"})
            self.assertEqual(p1.read_bytes(), p2.read_bytes())
            back = load_file(str(p1))
            self.assertEqual(safe_open(str(p1), "numpy").metadata(), {"k": "v"})
        for k in t:
            np.testing.assert_array_equal(back[k], t[k])


@unittest.skipUnless((FIX / "ref_encoder.safetensors").exists(), "fixtures not generated")
class FixtureTests(unittest.TestCase):
    def test_ops_recomputed_in_float32(self):
        files = sorted(glob.glob(str(FIX / "ops" / "*.safetensors")))
        self.assertGreaterEqual(len(files), 25)
        for f in files:
            t = {k: torch.from_numpy(v) for k, v in load_file(f).items()}
            meta = safe_open(f, "numpy").metadata()
            op, p = meta["op"], json.loads(meta["params"])
            x = t["x"]
            if op in ("conv2d", "conv_bn"):
                y = F.conv2d(x, t["weight"], t.get("bias"), p["stride"], p["padding"], p["dilation"], p["groups"])
                if op == "conv_bn":
                    y = F.batch_norm(y, t["bn.running_mean"], t["bn.running_var"], t["bn.weight"], t["bn.bias"],
                                     False, 0.0, p["eps"])
            elif op == "relu":
                y = F.relu(x)
            elif op == "relu6":
                y = F.relu6(x)
            elif op == "sigmoid":
                y = torch.sigmoid(x)
            elif op == "add":
                y = x + t["x2"]
            elif op == "max":
                y = torch.maximum(x, t["x2"])
            elif op == "concat":
                y = torch.cat([x, t["x2"]], p["axis"])
            elif op == "maxpool":
                y = F.max_pool2d(x, p["kernel"], p["stride"], p["padding"])
            elif op == "upsample_nearest":
                y = F.interpolate(x, scale_factor=p["scale"], mode="nearest")
            elif op == "softmax":
                y = torch.softmax(x, p["axis"])
            elif op == "affine_warp":
                grid = F.affine_grid(t["theta"], list(x.shape), align_corners=p["align_corners"])
                y = F.grid_sample(x, grid, mode=p["mode"], padding_mode=p["padding_mode"],
                                  align_corners=p["align_corners"])
            else:
                self.fail(f"{f}: unknown op {op}")
            with self.subTest(f=Path(f).name):
                self.assertEqual(t["y"].dtype, torch.float32)
                torch.testing.assert_close(y, t["y"], atol=1e-5, rtol=1e-5)

    def test_int8_numpy_equals_ort(self):
        files = sorted(glob.glob(str(FIX / "int8" / "*.safetensors")))
        self.assertGreaterEqual(len(files), 8)
        for f in files:
            t = load_file(f)
            p = json.loads(safe_open(f, "numpy").metadata()["params"])
            ref = qlinearconv_ref(t["x_q"], t["x_qparams"], t["weight_q"], t["weight_scale"], t["bias_q"],
                                  t["y_qparams"], p["stride"], p["padding"], p["dilation"], p["groups"])
            with self.subTest(f=Path(f).name):
                np.testing.assert_array_equal(ref, t["y_q"])
                self.assertLess((t["y_q"] == 0).mean(), 0.9)
                self.assertLess((t["y_q"] == 255).mean(), 0.5)
                if p["relu"]:
                    self.assertEqual(t["y_qparams"][1], 0)

    def test_ref_encoder_io(self):
        arch, tensors = load_model(FIX / "ref_encoder.safetensors")
        io = load_file(str(FIX / "ref_encoder_io.safetensors"))
        self.assertEqual(io["input"].shape, (1, 8, 64, 64))
        occ = (np.abs(io["input"]).sum(1) > 0).mean()
        self.assertAlmostEqual(occ, 0.15, delta=0.02)
        net, _, _ = load_net(FIX / "ref_encoder.safetensors")
        for i, w in enumerate(arch["widths"]):
            with torch.no_grad():
                y = net(torch.from_numpy(io["input"]), i).numpy()
            np.testing.assert_allclose(y, io[f"float.{i}"], atol=1e-4, rtol=1e-4)
            xq = quantize_tensor(io["input"], tensors[f"input.int8.{i}.qparams"])
            np.testing.assert_array_equal(xq, io[f"input_q.{i}"])
            np.testing.assert_array_equal(int8_chain_ref(arch, tensors, i, xq)["conv5"], io[f"int8.{i}"])
            self.assertEqual(io[f"int8.{i}"].shape[1], math.ceil(w * 64))

    def test_sizes(self):
        for f in glob.glob(str(FIX / "**" / "*.safetensors"), recursive=True):
            # the model fixtures (the reference encoder, the trimmed shipped model) hold weights; the
            # deep model's I/O fixture holds two agents' 64-channel maps and what each stage makes of them
            limit = 1_500_000 if any(n in f for n in ("ref_encoder", "model_io", "deep_io")) else 50_000
            self.assertLess(Path(f).stat().st_size, limit, f)



class DeepFusionTests(unittest.TestCase):
    """slimsplit_train/deep.py: the boxes an agent's head predicts, carried into the ego's frame."""

    def test_boxes_in_ego_match_late_fusion_moves(self):
        from slimsplit_train.coop import rot, theta_ego_from, wrap
        from slimsplit_train.deep import DeepModel
        g = torch.Generator().manual_seed(3)
        H = W = 32
        p = {"heatmap": torch.randn(1, 1, H, W, generator=g), "offset": torch.rand(1, 2, H, W, generator=g),
             "size": torch.randn(1, 2, H, W, generator=g), "yaw": torch.randn(1, 2, H, W, generator=g)}
        ego, agent = np.array([3.0, -4.0, 0.7]), np.array([-10.0, 6.0, -2.1])
        th = torch.from_numpy(theta_ego_from(ego, agent)[None]).float()
        out = DeepModel.boxes_in_ego(p, th)[0].numpy()
        for r, c in ((0, 0), (5, 17), (31, 9)):
            xj = (c + p["offset"][0, 0, r, c].item()) * 2 - 32            # the head's decode, agent frame
            yj = (r + p["offset"][0, 1, r, c].item()) * 2 - 32
            world = np.array([xj, yj]) @ rot(agent[2]).T + agent[:2]    # as late fusion moves a box
            e = (world - ego[:2]) @ rot(ego[2])
            np.testing.assert_allclose(out[1:3, r, c] * 32, e, atol=1e-3)
            psi = 0.5 * math.atan2(p["yaw"][0, 0, r, c].item(), p["yaw"][0, 1, r, c].item())
            psi_e = wrap(psi + agent[2] - ego[2])
            got = 0.5 * math.atan2(out[5, r, c], out[6, r, c])
            self.assertAlmostEqual(math.sin(2 * (got - psi_e)), 0.0, places=4)
            np.testing.assert_allclose(out[3:5, r, c], p["size"][0, :, r, c].numpy())



class CodebookTests(unittest.TestCase):
    """slimsplit_train/codebook.py: residual codebooks, and the bit packing codebook frames use."""

    def test_residual_levels_reduce_the_error_and_round_trip(self):
        from slimsplit_train import codebook
        g = torch.Generator().manual_seed(0)
        x = torch.randn(3000, 16, generator=g) * torch.linspace(0.1, 2.0, 16)
        books = codebook.fit(x, levels=3, size=32, iters=8)
        self.assertEqual(tuple(books.shape), (3, 32, 16))
        q = codebook.encode(x, books)
        self.assertTrue(int(q.max()) < 32 and int(q.min()) >= 0)
        errs = []
        for levels in (1, 2, 3):
            rec = codebook.decode(q[:, :levels], books[:levels])
            errs.append(float(((rec - x) ** 2).sum() / (x ** 2).sum()))
        self.assertLess(errs[1], errs[0])
        self.assertLess(errs[2], errs[1])
        m = x[:64].T.reshape(16, 8, 8)
        np.testing.assert_allclose(codebook.quantize_map(m, books)[:, 0, 0].numpy(), rec[0].numpy(), atol=1e-6)
        with self.assertRaises(ValueError):
            codebook.index_bits(100)

    def test_pack_bits_is_lsb_first_for_any_depth(self):
        from evaluate import pack_bits
        v = np.array([5, 127, 0, 64], np.uint8)
        stream = "".join(format(int(x), "07b")[::-1] for x in v)            # LSB first per value
        want = bytes(int(stream[i:i + 8].ljust(8, "0")[::-1], 2) for i in range(0, len(stream), 8))
        self.assertEqual(pack_bits(v, 7), want)
        self.assertEqual(pack_bits(np.array([1, 2, 3, 0]), 2), bytes([0b00111001]))


if __name__ == "__main__":
    unittest.main()
