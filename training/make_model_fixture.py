#!/usr/bin/env python3
"""Parity fixture of the cooperative model (Models/slimsplit-bev.safetensors) for the Swift engine:
one test frame, two agents (ego = agent 0).

    python training/make_model_fixture.py Tests/Fixtures/engine/model_io.safetensors --trim [--model ...] [--data /work/data]

Per agent a (0, 1):
  input.{a}            F32 [1, 8, 128, 128]  the agent's BEV (from the dataset shard)
  input_q.{a}          U8  [1, 8, 128, 128]  QuantizeLinear with input.int8.3.qparams
  pose.{a}             F64 [3]               x, y, yaw (world, true pose)
  encoder_int8.{a}     U8  [1, 64, 32, 32]   ONNX Runtime QLinearConv chain at full width (index 3)
  features.{a}         F32 [1, 64, 32, 32]   encoder_int8 dequantized with conv4.int8.3.qparams
  tx8_codes.{a}        U8  [1, 64, 32, 32]   8-bit transmitted codes (features.3.8.scale / zero_point)
  theta.{a}            F32 [2, 3]            affine_grid theta: ego grid -> agent a's grid
  warped.{a}           F32 [1, 64, 32, 32]   zero-filled, rotated (pose-conditioned 1x1) and warped features
  valid.{a}            U8  [1, 1, 32, 32]    warped ones map > 0.5
Server (float, computed in float64 from the float32 inputs, rounded once to float32), on
``features.*`` (no transmitted-feature quantization):
  fused_attention, heatmap, offset, size, yaw        attention fusion (the shipped mode)
  fused_max, heatmap_max                             max fusion
  server8.heatmap                                    attention fusion on the 8-bit dequantized codes
Metadata: the frame, agent names, widths index, and numpy-vs-ORT int8 difference count.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from evaluate import load_model  # noqa: E402
from slimsplit_train.coop import FrameSet, theta_ego_from  # noqa: E402
from slimsplit_train.onnx_build import int8_chain_model, ort_session  # noqa: E402
from slimsplit_train.quantize import dequantize_tensor, int8_chain_ref, quantize_tensor  # noqa: E402
from slimsplit_train.st_write import save_file  # noqa: E402

torch.set_num_threads(1)
SWIFT_KEYS = {"input_q", "encoder_int8", "features", "pose", "theta", "heatmap", "offset", "size", "yaw", "heatmap_max"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", default=str(ROOT / "Models/slimsplit-bev.safetensors"))
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--frame", type=int, default=40)
    ap.add_argument("--trim", action="store_true",
                    help="keep only what Tests/SlimEngineTests/ModelParityTests.swift reads (the committed fixture)")
    a = ap.parse_args()
    model = load_model(a.model)
    t = model.tensors
    arch = {k: v for k, v in model.arch.items() if k != "server"}
    wi = len(arch["widths"]) - 1
    ds = FrameSet(Path(a.data) / "test/shards", frame_stride=a.frame, max_recordings=1)
    fr = next(f for f in ds.frames if f["frame"] == a.frame and len(f["samples"]) >= 2)
    agents = [0, 1]
    sess = ort_session(int8_chain_model(arch, t, wi, 128, 128))
    out: dict[str, np.ndarray] = {}
    diffs = 0
    feats = []
    for k, j in enumerate(agents):
        x = ds.bev[fr["samples"][j]][None].float().numpy()
        xq = quantize_tensor(x, t[f"input.int8.{wi}.qparams"])
        yq = sess.run(None, {"input_q": xq})[0]
        ref = int8_chain_ref(arch, t, wi, xq)[arch["output"]]
        diffs += int((ref != yq).sum())
        f = dequantize_tensor(yq, t[f"{arch['output']}.int8.{wi}.qparams"])
        feats.append(f)
        out[f"input.{k}"] = x
        out[f"input_q.{k}"] = xq
        out[f"pose.{k}"] = fr["pose"][j].astype(np.float64)
        out[f"encoder_int8.{k}"] = yq
        out[f"features.{k}"] = f
        out[f"tx8_codes.{k}"] = model.quant.codes(torch.from_numpy(f), wi, 8).numpy()
        out[f"theta.{k}"] = theta_ego_from(fr["pose"][agents[0]], fr["pose"][j]).astype(np.float32)
    srv = model.server.double().eval()
    with torch.no_grad():
        F64 = torch.from_numpy(np.concatenate(feats)).double()
        th = torch.from_numpy(np.stack([out[f"theta.{k}"] for k in range(2)])).double()
        owner = torch.tensor([0, 0])
        wf, valid = srv.align(F64, th)
        for k in range(2):
            out[f"warped.{k}"] = wf[k:k + 1].float().numpy()
            out[f"valid.{k}"] = valid[k:k + 1].numpy().astype(np.uint8)
        fa = srv.fuse(wf, valid, owner, 1, "att")
        o = srv.head(fa)
        out["fused_attention"] = fa.float().numpy()
        for n in ("heatmap", "offset", "size", "yaw"):
            out[n] = o[n].float().numpy()
        fm = srv.fuse(wf, valid, owner, 1, "max")
        out["fused_max"] = fm.float().numpy()
        out["heatmap_max"] = srv.head(fm)["heatmap"].float().numpy()
        s, zp = model.quant.params(wi, 8)
        deq = (torch.stack([torch.from_numpy(out[f"tx8_codes.{k}"][0]) for k in range(2)]).double()
               - zp.double().view(1, -1, 1, 1)) * s.double().view(1, -1, 1, 1)
        out["server8.heatmap"] = srv(deq, th, owner, 1, "att")["heatmap"].float().numpy()
    meta = {"format": "slimsplit-model-io", "model": Path(a.model).name, "recording": fr["rec"],
            "frame": str(fr["frame"]), "agents": json.dumps([fr["agents"][j] for j in agents]),
            "width_index": str(wi), "fusion": "attention (heatmap etc.), max (heatmap_max)",
            "int8_numpy_vs_ort_differences": str(diffs)}
    if a.trim:
        out = {k: v for k, v in out.items() if k.split(".")[0] in SWIFT_KEYS}
        meta["note"] = "trimmed to what Tests/SlimEngineTests/ModelParityTests.swift reads (training/make_model_fixture.py writes more)"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in out.items()}, a.out, metadata=meta)
    print(f"wrote {a.out}: int8 numpy vs ORT differences: {diffs}")
    for k in sorted(out):
        print(f"  {k:18s} {out[k].dtype} {list(out[k].shape)}")


if __name__ == "__main__":
    main()
