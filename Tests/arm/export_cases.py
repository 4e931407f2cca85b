#!/usr/bin/env python3
"""Writes the engine's parity fixtures as flat case files for the C parity harness (parity.c).

The harness is plain C so that it cross-builds for aarch64 and runs under qemu, where no Swift
toolchain is; these files carry exactly what the Swift tests read (Tests/Fixtures/engine):
ONNX Runtime's QLinearConv cases, PyTorch's float convolutions, the reference encoder at
every width, int8 and float (batch norm folded as the engine folds it, in float32), and the
deep-fusion agent's int8 backbone and head layer (Models/slimsplit-deep.safetensors on deep_io.safetensors).

File: b"SLIMCASE", int32 kind (1 int8 chain, 2 float chain), int32 layers, int32 in_h, in_w, c,
then for int8 int32 x_zp and float32 x_scale; per layer int32 ci, co, kh, kw, sh, sw, ph, pw, dh,
dw, groups, and int32 y_zp + arrays (weight int8, weight_scale f32, bias int32, y_scale f32[1])
for int8, or int32 activation (0 none, 1 relu, 2 relu6) + arrays (weight f32, bias f32) for
float; then the input and the expected output (NHWC). Each array: int32 byte count, bytes.

    python3 Tests/arm/export_cases.py OUT_DIR      # writes OUT_DIR/*.case and OUT_DIR/cases.txt
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "Tests" / "Fixtures" / "engine"
ACT = {None: 0, "relu": 1, "relu6": 2}


def load(path: Path):
    with safe_open(str(path), "np") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}


def nhwc(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a[0].transpose(1, 2, 0))


class Case:
    def __init__(self, kind: int, layers: int, h: int, w: int, c: int):
        self.buf = bytearray(b"SLIMCASE")
        self.ints(kind, layers, h, w, c)

    def ints(self, *v: int) -> None:
        self.buf += struct.pack(f"<{len(v)}i", *[int(x) for x in v])

    def array(self, a: np.ndarray, dtype) -> None:
        b = np.ascontiguousarray(a, dtype=dtype).tobytes()
        self.ints(len(b))
        self.buf += b


def geometry(p: dict, wshape) -> list[int]:
    return [wshape[2], wshape[3], *p["stride"], *p["padding"], *p["dilation"], p["groups"]]


def int8_op(path: Path) -> bytes:
    t, md = load(path)
    p = json.loads(md["params"])
    x = t["x_q"]
    case = Case(1, 1, x.shape[2], x.shape[3], x.shape[1])
    case.ints(int(t["x_qparams"][1]))
    case.array(t["x_qparams"][:1], np.float32)
    w = t["weight_q"]
    case.ints(x.shape[1], w.shape[0], *geometry(p, w.shape), int(t["y_qparams"][1]))
    case.array(w, np.int8)
    case.array(t["weight_scale"], np.float32)
    case.array(t["bias_q"], np.int32)
    case.array(t["y_qparams"][:1], np.float32)
    case.array(nhwc(x), np.uint8)
    case.array(nhwc(t["y_q"]), np.uint8)
    return bytes(case.buf)


def fold(w, b, gamma, beta, mean, var, eps):
    s = (gamma / np.sqrt(var + np.float32(eps))).astype(np.float32)
    b = np.zeros(w.shape[0], np.float32) if b is None else b
    return (w * s[:, None, None, None]).astype(np.float32), ((b - mean) * s + beta).astype(np.float32)


def float_op(path: Path) -> bytes | None:
    t, md = load(path)
    if md.get("op") not in ("conv2d", "conv_bn"):
        return None
    p = json.loads(md["params"])
    x, w, b = t["x"], t["weight"], t.get("bias")
    if md["op"] == "conv_bn":
        w, b = fold(w, b, t["bn.weight"], t["bn.bias"], t["bn.running_mean"], t["bn.running_var"], p["eps"])
    case = Case(2, 1, x.shape[2], x.shape[3], x.shape[1])
    p = {"stride": p["stride"], "padding": p["padding"], "dilation": p["dilation"], "groups": p["groups"]}
    case.ints(x.shape[1], w.shape[0], *geometry(p, w.shape), 0)
    case.array(w, np.float32)
    case.array(np.zeros(w.shape[0]) if b is None else b, np.float32)
    case.array(nhwc(x), np.float32)
    case.array(nhwc(t["y"]), np.float32)
    return bytes(case.buf)


def active(c: int, slim: bool, width: float) -> int:
    from fractions import Fraction
    return int(-(-Fraction(str(width)) * c // 1)) if slim else c


def encoder_cases():
    t, md = load(FIX / "ref_encoder.safetensors")
    io, _ = load(FIX / "ref_encoder_io.safetensors")
    arch = json.loads(md["architecture"])
    names = [arch["input"]["name"]] + [l["name"] for l in arch["layers"]]
    if any(l["input"] != names[i] for i, l in enumerate(arch["layers"])) or arch["output"] != names[-1]:
        raise SystemExit("export_cases.py: the reference encoder is not a plain chain")
    for wi, width in enumerate(arch["widths"]):
        xq = io[f"input_q.{wi}"]
        q = Case(1, len(arch["layers"]), xq.shape[2], xq.shape[3], xq.shape[1])
        iq = t[f"input.int8.{wi}.qparams"]
        q.ints(int(iq[1]))
        q.array(iq[:1], np.float32)
        xf = io["input"]
        f = Case(2, len(arch["layers"]), xf.shape[2], xf.shape[3], xf.shape[1])
        for l in arch["layers"]:
            co = active(l["out_channels"], l["slim_out"], width)
            ci = active(l["in_channels"], l["slim_in"], width)
            groups = co if l["groups"] > 1 else 1
            g = [*l["kernel"], *l["stride"], *l["padding"], *l["dilation"], groups]
            n = l["name"]
            q.ints(ci, co, *g, int(t[f"{n}.int8.{wi}.qparams"][1]))
            q.array(t[f"{n}.int8.{wi}.weight"], np.int8)
            q.array(t[f"{n}.int8.{wi}.weight_scale"], np.float32)
            q.array(t[f"{n}.int8.{wi}.bias"], np.int32)
            q.array(t[f"{n}.int8.{wi}.qparams"][:1], np.float32)
            w = t[f"{n}.weight"][:co, : ci // groups]
            b = t[f"{n}.bias"][:co] if f"{n}.bias" in t else None
            if l.get("batch_norm"):
                w, b = fold(w, b, t[f"{n}.bn.{wi}.weight"], t[f"{n}.bn.{wi}.bias"], t[f"{n}.bn.{wi}.running_mean"],
                            t[f"{n}.bn.{wi}.running_var"], l["bn_eps"])
            f.ints(ci, co, *g, ACT[l.get("activation")])
            f.array(w, np.float32)
            f.array(np.zeros(co) if b is None else b, np.float32)
        q.array(nhwc(xq), np.uint8)
        q.array(nhwc(io[f"int8.{wi}"]), np.uint8)
        f.array(nhwc(xf), np.float32)
        f.array(nhwc(io[f"float.{wi}"]), np.float32)
        yield f"encoder_int8_w{wi}", bytes(q.buf)
        yield f"encoder_float_w{wi}", bytes(f.buf)


def deep_backbone_cases():
    """The deep agent's int8 layers (backbone, then its own head's shared layer) on both fixture
    agents' maps, quantized as the int8 encoder's output (what DeepParity checks in Swift)."""
    t, md = load(ROOT / "Models" / "slimsplit-deep.safetensors")
    io, _ = load(FIX / "deep_io.safetensors")
    dil = json.loads(md["architecture"])["deep"]["backbone_dilations"]
    layers = [(f"deep.agent.backbone.{n}.int8", d) for n, d in enumerate(dil)] + [("deep.agent.head.shared.int8", 1)]
    iq = t["deep.agent.int8.input.qparams"]
    feats, want = io["features"], io["head_q"]
    for k in range(feats.shape[0]):
        x = np.clip(np.rint(feats[k:k + 1].astype(np.float32) / np.float32(iq[0])) + np.float32(iq[1]), 0, 255)
        q = Case(1, len(layers), x.shape[2], x.shape[3], x.shape[1])
        q.ints(int(iq[1]))
        q.array(iq[:1], np.float32)
        for name, d in layers:
            w = t[f"{name}.weight"]
            q.ints(w.shape[1], w.shape[0], 3, 3, 1, 1, d, d, d, d, 1, int(t[f"{name}.qparams"][1]))
            q.array(w, np.int8)
            q.array(t[f"{name}.weight_scale"], np.float32)
            q.array(t[f"{name}.bias"], np.int32)
            q.array(t[f"{name}.qparams"][:1], np.float32)
        q.array(nhwc(x.astype(np.uint8)), np.uint8)
        q.array(nhwc(want[k:k + 1]), np.uint8)
        yield f"deep_agent_int8_agent{k}", bytes(q.buf)


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for p in sorted((FIX / "int8").glob("*.safetensors")):
        names.append(f"int8_{p.stem}")
        (out / f"{names[-1]}.case").write_bytes(int8_op(p))
    for p in sorted((FIX / "ops").glob("conv*.safetensors")):
        data = float_op(p)
        if data:
            names.append(f"float_{p.stem}")
            (out / f"{names[-1]}.case").write_bytes(data)
    for name, data in [*encoder_cases(), *deep_backbone_cases()]:
        names.append(name)
        (out / f"{name}.case").write_bytes(data)
    (out / "cases.txt").write_text("\n".join(names) + "\n")
    print(f"export_cases.py: {len(names)} cases in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
