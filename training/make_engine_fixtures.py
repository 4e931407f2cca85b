#!/usr/bin/env python3
"""Write the Swift engine's parity fixtures to Tests/Fixtures/engine/ (deterministic, fixed seeds).

    ops/NAME.safetensors       float operators, expected outputs from PyTorch
    int8/NAME.safetensors      single QLinearConv layers, expected outputs from ONNX Runtime
    ref_encoder.safetensors    the reference encoder as a model file (docs/model-format.md)
    ref_encoder_io.safetensors an input and, per width, PyTorch float and ONNX Runtime int8 outputs

Float references are computed by PyTorch in float64 from the stored float32 inputs and rounded to
float32 once, so they do not depend on PyTorch's float32 algorithm choices. Int8 references are
ONNX Runtime's (CPU EP, 1 thread, default optimization); each is also recomputed in numpy with
ORT's requantization rule and the number of differing values is printed.

Usage:  python training/make_engine_fixtures.py [--out Tests/Fixtures/engine]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from slimsplit_train.arch import load_arch  # noqa: E402
from slimsplit_train.data import bev_input  # noqa: E402
from slimsplit_train.model_io import float_tensors, load_net, save_model  # noqa: E402
from slimsplit_train.st_write import save_file  # noqa: E402  (deterministic bytes)
from slimsplit_train.onnx_build import int8_chain_model, ort_session, qlinearconv_model  # noqa: E402
from slimsplit_train.quantize import (  # noqa: E402
    dequantize_tensor, int8_chain_ref, qconv_accumulate, qlinearconv_ref, quantize_net, quantize_tensor)

torch.set_num_threads(1)
WRITTEN: list[Path] = []


def write(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata=metadata)
    WRITTEN.append(path)


def f32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy().copy()


# ---------------------------------------------------------------------------------------------
# a. float operators


def op_cases():
    """(name, op, params, inputs builder seed) — inputs are made in make_op()."""
    c = []
    conv = lambda k, s, p, d, g, cin, cout, h, w, bias=True: dict(  # noqa: E731
        kernel=[k, k], stride=[s, s], padding=[p, p], dilation=[d, d], groups=g, bias=bias,
        cin=cin, cout=cout, h=h, w=w)
    c += [
        ("conv2d_k1", "conv2d", conv(1, 1, 0, 1, 1, 5, 6, 13, 11)),
        ("conv2d_k3_s1_p1", "conv2d", conv(3, 1, 1, 1, 1, 5, 6, 13, 11)),
        ("conv2d_k3_s2_p1_odd", "conv2d", conv(3, 2, 1, 1, 1, 5, 6, 13, 11)),
        ("conv2d_k5_p2", "conv2d", conv(5, 1, 2, 1, 1, 6, 5, 11, 13)),
        ("conv2d_k3_dilation2", "conv2d", conv(3, 1, 2, 2, 1, 5, 6, 13, 11)),
        ("conv2d_k3_groups2", "conv2d", conv(3, 1, 1, 1, 2, 6, 4, 13, 11)),
        ("conv2d_k3_depthwise", "conv2d", conv(3, 1, 1, 1, 6, 6, 6, 13, 11)),
        ("conv2d_k3_s2_depthwise_odd", "conv2d", conv(3, 2, 1, 1, 6, 6, 6, 13, 11)),
        ("conv2d_k3_nobias", "conv2d", conv(3, 1, 1, 1, 1, 5, 6, 13, 11, bias=False)),
        ("conv_bn_k3_s1_p1", "conv_bn", {**conv(3, 1, 1, 1, 1, 5, 6, 13, 11), "eps": 1e-5}),
        ("conv_bn_k3_s2_depthwise_odd", "conv_bn", {**conv(3, 2, 1, 1, 6, 6, 6, 13, 11), "eps": 1e-3}),
        ("conv_bn_k1_nobias", "conv_bn", {**conv(1, 1, 0, 1, 1, 6, 5, 13, 11, bias=False), "eps": 1e-5}),
        ("relu", "relu", {}),
        ("relu6", "relu6", {}),
        ("sigmoid", "sigmoid", {}),
        ("add", "add", {}),
        ("max", "max", {}),
        ("concat", "concat", {"axis": 1}),
        ("maxpool_k2_s2_odd", "maxpool", {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0]}),
        ("maxpool_k3_s1_p1", "maxpool", {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1]}),
        ("maxpool_k3_s2_p1_odd", "maxpool", {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1]}),
        ("upsample_nearest_x2", "upsample_nearest", {"scale": 2}),
        ("softmax_axis1", "softmax", {"axis": 1}),
    ]
    warp = {"align_corners": False, "padding_mode": "zeros", "mode": "bilinear"}

    def theta(deg, tx, ty, sx=1.0, sy=1.0):
        a = math.radians(deg)
        return [[sx * math.cos(a), -sy * math.sin(a), tx], [sx * math.sin(a), sy * math.cos(a), ty]]

    c += [
        ("affine_warp_identity", "affine_warp", {**warp, "_theta": theta(0, 0, 0)}),
        ("affine_warp_rot30", "affine_warp", {**warp, "_theta": theta(30, 0, 0)}),
        ("affine_warp_translate", "affine_warp", {**warp, "_theta": theta(0, 0.3, -0.25)}),
        ("affine_warp_rot_translate_outside", "affine_warp", {**warp, "_theta": theta(-45, 0.7, 0.5)}),
        ("affine_warp_scale", "affine_warp", {**warp, "_theta": theta(0, 0.05, 0, 0.6, 1.3)}),
    ]
    return c


def make_op(name: str, op: str, params: dict, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).float()  # noqa: E731
    tensors: dict[str, np.ndarray] = {}
    meta_params = {k: v for k, v in params.items() if k not in ("cin", "cout", "h", "w") and not k.startswith("_")}
    d = torch.float64
    if op in ("conv2d", "conv_bn"):
        cin, cout, h, w, grp = params["cin"], params["cout"], params["h"], params["w"], params["groups"]
        kh, kw = params["kernel"]
        x = rn(1, cin, h, w)
        wt = rn(cout, cin // grp, kh, kw, scale=1.0 / math.sqrt(cin // grp * kh * kw))
        b = rn(cout, scale=0.2) if params["bias"] else None
        tensors.update(x=f32(x), weight=f32(wt))
        if b is not None:
            tensors["bias"] = f32(b)
        y = F.conv2d(x.to(d), wt.to(d), None if b is None else b.to(d), params["stride"], params["padding"],
                     params["dilation"], grp)
        if op == "conv_bn":
            gamma = (torch.rand(cout, generator=g) + 0.5).float()
            beta = rn(cout, scale=0.3)
            mean = rn(cout, scale=0.5)
            var = (torch.rand(cout, generator=g) * 1.5 + 0.05).float()
            tensors.update({"bn.weight": f32(gamma), "bn.bias": f32(beta), "bn.running_mean": f32(mean),
                            "bn.running_var": f32(var)})
            y = F.batch_norm(y, mean.to(d), var.to(d), gamma.to(d), beta.to(d), training=False, eps=params["eps"])
    elif op in ("relu", "relu6", "sigmoid", "add", "max"):
        x = rn(1, 5, 13, 11, scale=4.0)
        x.view(-1)[::17] = 0.0  # exact zeros
        x.view(-1)[5::23] = 6.0  # relu6's edge
        tensors["x"] = f32(x)
        xd = x.to(d)
        if op in ("add", "max"):
            x2 = rn(1, 5, 13, 11, scale=4.0)
            x2.view(-1)[::19] = x.view(-1)[::19]  # some ties for max
            tensors["x2"] = f32(x2)
            y = xd + x2.to(d) if op == "add" else torch.maximum(xd, x2.to(d))
        else:
            y = {"relu": F.relu, "relu6": F.relu6, "sigmoid": torch.sigmoid}[op](xd)
    elif op == "concat":
        x, x2 = rn(1, 5, 13, 11), rn(1, 3, 13, 11)
        tensors.update(x=f32(x), x2=f32(x2))
        y = torch.cat([x.to(d), x2.to(d)], dim=params["axis"])
    elif op == "maxpool":
        x = rn(1, 5, 13, 11) - 1.0  # mostly negative: padding must act as -inf, not 0
        tensors["x"] = f32(x)
        meta_params["ceil_mode"] = False
        meta_params["padding_value"] = "-inf"
        y = F.max_pool2d(x.to(d), params["kernel"], params["stride"], params["padding"], ceil_mode=False)
    elif op == "upsample_nearest":
        x = rn(1, 5, 7, 6)
        tensors["x"] = f32(x)
        y = F.interpolate(x.to(d), scale_factor=params["scale"], mode="nearest")
    elif op == "softmax":
        x = rn(1, 6, 13, 11, scale=3.0)
        tensors["x"] = f32(x)
        y = torch.softmax(x.to(d), dim=params["axis"])
    elif op == "affine_warp":
        x = rn(1, 3, 13, 11)
        th = torch.tensor([params["_theta"]], dtype=torch.float32)
        tensors.update(x=f32(x), theta=f32(th))
        grid = F.affine_grid(th.to(d), list(x.shape), align_corners=False)
        y = F.grid_sample(x.to(d), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    else:
        raise ValueError(op)
    tensors["y"] = f32(y)
    write(OUT / "ops" / f"{name}.safetensors", tensors, {"op": op, "params": json.dumps(meta_params)})


# ---------------------------------------------------------------------------------------------
# b. int8 QLinearConv layers


def int8_cases():
    base = dict(kernel=3, stride=1, padding=1, dilation=1, groups=1, cin=8, cout=16, h=13, w=11,
                x_zp=0, relu=False)
    return [
        ("qlinearconv_k3_s1_p1", {**base}),
        ("qlinearconv_k3_s2_p1_odd", {**base, "stride": 2}),
        ("qlinearconv_k1", {**base, "kernel": 1, "padding": 0, "cin": 16, "cout": 8}),
        ("qlinearconv_k3_groups2", {**base, "groups": 2, "cout": 12}),
        ("qlinearconv_k3_depthwise", {**base, "groups": 12, "cin": 12, "cout": 12}),
        ("qlinearconv_k3_s2_depthwise_odd", {**base, "groups": 12, "cin": 12, "cout": 12, "stride": 2}),
        ("qlinearconv_k3_dilation2", {**base, "padding": 2, "dilation": 2}),
        ("qlinearconv_k5_p2_xzp37", {**base, "kernel": 5, "padding": 2, "x_zp": 37}),
        ("qlinearconv_k3_xzp37_yzp", {**base, "x_zp": 37}),
        ("qlinearconv_k3_relu", {**base, "relu": True}),
        ("qlinearconv_k3_s2_relu_xzp37", {**base, "stride": 2, "x_zp": 37, "relu": True}),
        ("qlinearconv_k1_relu_wide", {**base, "kernel": 1, "padding": 0, "cin": 64, "cout": 32, "relu": True}),
        # power-of-two scales: the multiplier is 2^-3 / 2^-4 / 2^-5 per channel, so many results are
        # exact .5 ties and the rounding mode (half to even) is visible
        ("qlinearconv_k1_ties_xzp128", {**base, "kernel": 1, "padding": 0, "cin": 4, "cout": 12, "h": 16, "w": 16,
                                        "x_zp": 128, "ties": True}),
        ("qlinearconv_k3_ties_relu", {**base, "cin": 2, "cout": 6, "relu": True, "ties": True}),
    ]


def make_int8(name: str, p: dict, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    cin, cout, grp, k = p["cin"], p["cout"], p["groups"], p["kernel"]
    stride, pad, dil = [p["stride"]] * 2, [p["padding"]] * 2, [p["dilation"]] * 2
    x_scale, x_zp = np.float32(0.02), int(p["x_zp"])
    # input: uint8, about a quarter exactly at the zero point (post-ReLU-like sparsity)
    x_q = rng.integers(0, 256, size=(1, cin, p["h"], p["w"])).astype(np.uint8)
    x_q[rng.random(x_q.shape) < 0.25] = x_zp
    # weights: float, quantized symmetric per output channel
    fan = cin // grp * k * k
    wf = (rng.standard_normal((cout, cin // grp, k, k)) * math.sqrt(2.0 / fan)).astype(np.float32)
    w_scale = (np.abs(wf.reshape(cout, -1)).max(1) / np.float32(127)).astype(np.float32)
    w_q = np.clip(np.rint(wf / w_scale.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int8)
    bf = (rng.standard_normal(cout) * 0.3).astype(np.float32)
    bias_q = np.rint(bf.astype(np.float64) / (np.float64(x_scale) * w_scale)).astype(np.int32)
    # output qparams: the real-valued result's 0.5..99.5 percentile range (a few values saturate)
    acc = qconv_accumulate(x_q, x_zp, w_q, bias_q, stride, pad, dil, grp)
    yf = acc * (np.float64(x_scale) * w_scale.reshape(1, -1, 1, 1))
    if p["relu"]:
        lo, hi = 0.0, float(np.percentile(yf[yf > 0], 99.5))
    else:
        lo, hi = float(np.percentile(yf, 0.5)), float(np.percentile(yf, 99.5))
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    y_scale = np.float32((hi - lo) / 255)
    y_zp = 0 if p["relu"] else int(np.clip(np.rint(-lo / y_scale), 0, 255))
    if p.get("ties"):
        x_scale, y_scale = np.float32(2.0 ** -7), np.float32(2.0 ** -5)
        y_zp = 0 if p["relu"] else 128
        j = np.arange(cout) % 3  # multiplier 2^-(3+j)
        w_scale = (2.0 ** -(1 + j)).astype(np.float32)
        lim = (8 * 2 ** j).reshape(-1, 1, 1, 1)
        w_q = np.clip(np.rint(rng.uniform(-1, 1, w_q.shape) * lim), -127, 127).astype(np.int8)
        bias_q = rng.integers(-64, 65, size=cout).astype(np.int32)
        acc = qconv_accumulate(x_q, x_zp, w_q, bias_q, stride, pad, dil, grp)
    x_qp = np.array([x_scale, x_zp], np.float32)
    y_qp = np.array([y_scale, y_zp], np.float32)

    model = qlinearconv_model(x_q.shape, x_qp, w_q, w_scale, bias_q, y_qp, stride, pad, dil, grp)
    y_q = ort_session(model).run(None, {"x_q": x_q})[0]
    ref32 = qlinearconv_ref(x_q, x_qp, w_q, w_scale, bias_q, y_qp, stride, pad, dil, grp, np.float32)
    ref64 = qlinearconv_ref(x_q, x_qp, w_q, w_scale, bias_q, y_qp, stride, pad, dil, grp, np.float64)
    # round half away from zero instead of half to even (float32 multiplier)
    m = (np.float32(x_scale) * w_scale) / np.float32(y_scale)
    v = acc.astype(np.float32) * m.reshape(1, -1, 1, 1)
    away = np.clip(np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)) + y_zp, 0, 255).astype(np.uint8)
    params = {"stride": stride, "padding": pad, "dilation": dil, "groups": grp, "relu": bool(p["relu"])}
    write(OUT / "int8" / f"{name}.safetensors",
          {"x_q": x_q, "x_qparams": x_qp, "weight_q": w_q, "weight_scale": w_scale, "bias_q": bias_q,
           "y_qparams": y_qp, "y_q": y_q},
          {"op": "qlinearconv", "params": json.dumps(params)})
    return {
        "name": name, "shape": list(y_q.shape), "n": int(y_q.size),
        "diff_numpy_f32": int((ref32 != y_q).sum()),
        "maxdiff_numpy_f32": int(np.abs(ref32.astype(int) - y_q.astype(int)).max()),
        "diff_numpy_f64_multiplier": int((ref64 != y_q).sum()),
        "diff_round_half_away": int((away != y_q).sum()),
        "at_0": float((y_q == 0).mean()), "at_255": float((y_q == 255).mean()),
        "y_zp": y_zp, "y_scale": float(y_scale),
        "exact_ties": int((np.abs(v - np.floor(v)) == 0.5).sum()),
    }


# ---------------------------------------------------------------------------------------------
# c. reference encoder


def make_ref_encoder() -> None:
    arch = load_arch(ROOT / "Configs" / "models" / "ref-encoder.yaml")
    from slimsplit_train.arch import SlimNet

    torch.manual_seed(1234)
    net = SlimNet(arch)
    g = torch.Generator().manual_seed(4321)
    with torch.no_grad():
        for spec in arch["layers"]:
            layer = net.layers[spec["name"]]
            layer.bias.copy_((torch.rand(layer.bias.shape, generator=g) - 0.5) * 0.2)
        # BN statistics per width from data (each width sees its own activations), then perturbed
        stat_inputs = torch.cat([bev_input(200 + k, 128, 128) for k in range(4)])
        for i in range(len(arch["widths"])):
            x = stat_inputs
            for spec in arch["layers"]:
                layer = net.layers[spec["name"]]
                wt, b, grp = layer.sliced(i)
                y = F.conv2d(x, wt, b, layer.stride, layer.padding, layer.dilation, grp)
                mean = y.mean(dim=(0, 2, 3))
                var = y.var(dim=(0, 2, 3), unbiased=False)
                bn = layer.bn[i]
                co = mean.numel()
                bn.running_mean.copy_(mean + 0.1 * var.sqrt() * torch.randn(co, generator=g))
                bn.running_var.copy_(var * (0.8 + 0.45 * torch.rand(co, generator=g)) + 1e-3)
                bn.weight.copy_(0.5 + torch.rand(co, generator=g))
                bn.bias.copy_(0.2 * torch.randn(co, generator=g))
                x = layer(x, i)
    calib = [bev_input(100 + k, 128, 128) for k in range(4)]
    tensors = float_tensors(net)
    tensors.update(quantize_net(net, calib))
    model_path = OUT / "ref_encoder.safetensors"
    save_model(model_path, arch, tensors)
    WRITTEN.append(model_path)

    # io: reload from the file so the expected values come from exactly what was written
    net2, arch2, t2 = load_net(model_path)
    x = bev_input(999, 64, 64)
    io = {"input": f32(x)}
    net64 = net2.double()
    print("ref_encoder: input occupancy %.3f, max %.3f" % (float((x.abs().sum(1) > 0).float().mean()), float(x.max())))
    with torch.no_grad():
        for i, wdt in enumerate(arch2["widths"]):
            yf = net64(x.double(), i)
            io[f"float.{i}"] = f32(yf)
            qp_in = t2[f"input.int8.{i}.qparams"]
            x_q = quantize_tensor(io["input"], qp_in)
            io[f"input_q.{i}"] = x_q
            sess = ort_session(int8_chain_model(arch2, t2, i, 64, 64, float_io=False))
            y_q = sess.run(None, {"input_q": x_q})[0]
            io[f"int8.{i}"] = y_q
            ref = int8_chain_ref(arch2, t2, i, x_q)[arch2["output"]]
            qp_out = t2[f"{arch2['output']}.int8.{i}.qparams"]
            deq = dequantize_tensor(y_q, qp_out)
            rel = float(np.linalg.norm(deq - io[f"float.{i}"]) / np.linalg.norm(io[f"float.{i}"]))
            print(f"  width {wdt}: out {list(y_q.shape)}, int8 vs numpy chain: {(ref != y_q).sum()} of {y_q.size} differ"
                  f"; dequantized int8 vs float rel. L2 error {rel:.4f}; y_q at 0: {(y_q == 0).mean():.3f}, "
                  f"at 255: {(y_q == 255).mean():.3f}, zp {int(qp_out[1])}; input zp {int(qp_in[1])}, "
                  f"input saturated: {int((x_q == 255).sum())}")
            assert (y_q == 0).mean() < 0.5 and (y_q == 255).mean() < 0.5 and y_q.std() > 5, "int8 output degenerate"
            assert rel < 0.1, "int8 output far from float"
    io_path = OUT / "ref_encoder_io.safetensors"
    write(io_path, io, {"model": "ref_encoder.safetensors",
                        "note": "float.{i}: PyTorch eval (float64, rounded to float32); int8.{i}: ONNX Runtime "
                                "QLinearConv chain on input_q.{i}"})
    check_independent(model_path, io_path)


def check_independent(model_path: Path, io_path: Path) -> None:
    """Width 1.0 (and every width) through plain torch.nn modules built from the file's tensors."""
    from safetensors import safe_open
    from safetensors.numpy import load_file
    import torch.nn as nn

    with safe_open(str(model_path), framework="numpy") as f:
        arch = json.loads(f.metadata()["architecture"])
    t = load_file(str(model_path))
    io = load_file(str(io_path))
    x = torch.from_numpy(io["input"])
    for i, wdt in enumerate(arch["widths"]):
        h = x
        for spec in arch["layers"]:
            n = spec["name"]
            co = math.ceil(wdt * spec["out_channels"])
            ci = math.ceil(wdt * spec["in_channels"]) if spec["slim_in"] else spec["in_channels"]
            conv = nn.Conv2d(ci, co, spec["kernel"], spec["stride"], spec["padding"], spec["dilation"], bias=True)
            bn = nn.BatchNorm2d(co, eps=spec["bn_eps"])
            with torch.no_grad():
                conv.weight.copy_(torch.from_numpy(t[f"{n}.weight"][:co, :ci]))
                conv.bias.copy_(torch.from_numpy(t[f"{n}.bias"][:co]))
                for fld in ("weight", "bias", "running_mean", "running_var"):
                    getattr(bn, fld).copy_(torch.from_numpy(t[f"{n}.bn.{i}.{fld}"]))
            seq = nn.Sequential(conv, bn, nn.ReLU() if spec["activation"] == "relu" else nn.Identity()).eval()
            with torch.no_grad():
                h = seq(h)
        d = np.abs(h.numpy() - io[f"float.{i}"]).max()
        scale = np.abs(io[f"float.{i}"]).max()
        print(f"  independent torch.nn float32 check, width {wdt}: max |diff| {d:.2e} (output max {scale:.2f})")
        assert d <= 1e-4 * max(1.0, scale), "float output differs from an independent PyTorch run"


def main() -> None:
    global OUT
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "Tests" / "Fixtures" / "engine")
    args = ap.parse_args()
    OUT = args.out
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, numpy {np.__version__}")
    for k, (name, op, params) in enumerate(op_cases()):
        make_op(name, op, params, seed=1000 + k)
    print("int8 QLinearConv cases (ORT vs numpy requantization; n = output values):")
    for k, (name, p) in enumerate(int8_cases()):
        r = make_int8(name, p, seed=2000 + k)
        print(f"  {r['name']:34s} n={r['n']:5d} differ: numpy f32 multiplier {r['diff_numpy_f32']} "
              f"(max {r['maxdiff_numpy_f32']}), f64 multiplier {r['diff_numpy_f64_multiplier']}, "
              f"round-half-away {r['diff_round_half_away']} (exact .5 ties {r['exact_ties']}); "
              f"y_zp {r['y_zp']}, at 0 {r['at_0']:.2f}, at 255 {r['at_255']:.3f}")
        assert r["at_0"] < 0.9 and r["at_255"] < 0.5, f"{name}: degenerate output"
    make_ref_encoder()
    print("wrote:")
    total = 0
    for p in WRITTEN:
        size = p.stat().st_size
        total += size
        print(f"  {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}  {size} bytes")
    print(f"  {len(WRITTEN)} files, {total} bytes")


OUT = ROOT / "Tests" / "Fixtures" / "engine"

if __name__ == "__main__":
    main()
