#!/usr/bin/env python3
"""Int8 calibration of the server's backbone and shared head convolution, added to a model file.

    python training/calibrate_server.py --model Models/slimsplit-bev.safetensors --data /work/data

Runs the float server (attention fusion, every agent in turn the ego) on validation frames,
records the range of the backbone's input and of each convolution's output, and writes, next to
the existing tensors:
  server.int8.input.qparams                      F32 [2]   uint8 scale, zero point of backbone.0's input
  server.{layer}.int8.weight|weight_scale|bias   I8 / F32 / I32   per-channel symmetric weights (BN folded)
  server.{layer}.int8.qparams                    F32 [2]   the layer's (ReLU) output
for layer in backbone.0..3 and head.shared. The 1x1 heads stay float (they read the dequantized
head.shared output). Requantization follows ONNX QLinearConv (docs/model-format.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from evaluate import load_model  # noqa: E402
from slimsplit_train.coop import FrameSet, encoder_forward, theta_ego_from  # noqa: E402
from slimsplit_train.quantize import qparams_from_range, quantize_weights  # noqa: E402
from slimsplit_train.st_write import save_file  # noqa: E402

LAYERS = ["backbone.0", "backbone.1", "backbone.2", "backbone.3", "head.shared"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(HERE.parent / "Models/slimsplit-bev.safetensors"))
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--frames", type=int, default=48)
    ap.add_argument("--split", default="val/shards")
    ap.add_argument("--dry-run", action="store_true", help="print the ranges only")
    a = ap.parse_args()
    torch.set_num_threads(2)
    model = load_model(a.model)
    t = model.tensors
    from safetensors import safe_open
    with safe_open(a.model, framework="numpy") as f:
        meta = f.metadata()
    ds = FrameSet(Path(a.data) / a.split)
    srv = model.server
    wi = len(model.arch["widths"]) - 1
    lo = {k: np.inf for k in ["input"] + LAYERS}
    hi = {k: -np.inf for k in ["input"] + LAYERS}
    step = max(1, len(ds) // a.frames)
    with torch.no_grad():
        for fi in range(0, len(ds), step):
            fr = ds.frames[fi]
            bev = ds.bev[fr["samples"]].float()
            feats = model.quant(encoder_forward(model.encoder, bev, wi, False), wi, 8)
            A = feats.shape[0]
            for e in range(A):
                th = torch.from_numpy(np.stack([theta_ego_from(fr["pose"][e], fr["pose"][j]) for j in range(A)])).float()
                wf, valid = srv.align(feats, th)
                x = srv.fuse(wf, valid, torch.zeros(A, dtype=torch.long), 1, "att")
                lo["input"] = min(lo["input"], float(x.min())); hi["input"] = max(hi["input"], float(x.max()))
                for k, blk in enumerate(srv.backbone):
                    x = blk(x)
                    n = f"backbone.{k}"
                    lo[n] = min(lo[n], float(x.min())); hi[n] = max(hi[n], float(x.max()))
                x = srv.shared(x)
                lo["head.shared"] = min(lo["head.shared"], float(x.min())); hi["head.shared"] = max(hi["head.shared"], float(x.max()))
    if a.dry_run:
        print(", ".join(f"{k} [{lo[k]:.2f}, {hi[k]:.2f}]" for k in lo))
        return
    out = dict(t)
    qp = {k: qparams_from_range(lo[k], hi[k]) for k in lo}
    out["server.int8.input.qparams"] = qp["input"]
    prev = "input"
    for n in LAYERS:
        q, s, b = quantize_weights(t[f"server.{n}.weight"], t[f"server.{n}.bias"], float(qp[prev][0]))
        out[f"server.{n}.int8.weight"] = q
        out[f"server.{n}.int8.weight_scale"] = s
        out[f"server.{n}.int8.bias"] = b
        out[f"server.{n}.int8.qparams"] = qp[n]
        prev = n
    arch = json.loads(meta["architecture"])
    arch["server"]["int8"] = {"layers": LAYERS, "input": "server.int8.input.qparams",
                              "doc": "optional int8 backbone: quantize the fused map with server.int8.input.qparams, "
                                     "QLinearConv chain backbone.0..3, head.shared, dequantize, float 1x1 heads",
                              "calibration": f"min/max over {len(range(0, len(ds), step))} validation frames, every agent as ego, 8-bit features"}
    meta["architecture"] = json.dumps(arch, separators=(",", ":"))
    save_file(out, a.model, metadata=meta)
    print(f"added server int8 tensors to {a.model}: " + ", ".join(f"{k} [{lo[k]:.2f}, {hi[k]:.2f}]" for k in lo))


if __name__ == "__main__":
    main()
