#!/usr/bin/env python3
"""Export a trained cooperative detector (training/train.py checkpoint) as a SlimSplit model file.

    python training/export.py --ckpt /work/data/run/ckpt.pt --data /work/data --out Models/slimsplit-bev.safetensors

The file (docs/model-format.md, format 1) holds
  * the encoder (format-1 conv2d layers): float weights, switchable BN, and int8 tensors per width
    (BN folding + min/max calibration on validation BEVs, training/slimsplit_train/quantize.py);
  * the server's BN-folded float tensors ``server.*`` (architecture under "server" in the JSON);
  * the transmitted-feature quantizers ``features.{width_index}.{bits}.scale`` / ``.zero_point``
    and the empty-cell value ``features.{width_index}.{bits}.empty`` (for sparse frames).
Also writes ONNX encoders (full width, float and int8 QLinearConv chain) next to it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from slimsplit_train.arch import FORMAT, FORMAT_VERSION, arch_json, validate_arch  # noqa: E402
from slimsplit_train.coop import BITS, CoopModel, FrameSet, server_arch  # noqa: E402
from slimsplit_train.model_io import check_tensors, float_tensors  # noqa: E402
from slimsplit_train.quantize import fold_bn, quantize_net  # noqa: E402
from slimsplit_train.st_write import save_file  # noqa: E402


def load_ckpt(path) -> CoopModel:
    ck = torch.load(path, map_location="cpu", weights_only=False)
    model = CoopModel(ck["arch"])
    model.load_state_dict(ck["state"])
    model.eval()
    return model


def fold(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d | None) -> tuple[np.ndarray, np.ndarray]:
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    if bn is not None:
        k = bn.weight.detach().double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = w * k.view(-1, 1, 1, 1)
        b = (b - bn.running_mean.double()) * k + bn.bias.detach().double()
    return w.float().numpy().copy(), b.float().numpy().copy()


def server_tensors(model: CoopModel) -> dict[str, np.ndarray]:
    s = model.server
    out = {}
    convs = {"server.fusion.rotate": (s.rotate_conv, None), "server.fusion.score": (s.score, None), "server.head.shared": (s.shared[0], None),
             "server.head.heatmap": (s.heatmap, None), "server.head.offset": (s.offset, None),
             "server.head.size": (s.size, None), "server.head.yaw": (s.yaw, None)}
    for k, blk in enumerate(s.backbone):
        convs[f"server.backbone.{k}"] = (blk[0], blk[1])
    for name, (c, bn) in convs.items():
        w, b = fold(c, bn)
        out[f"{name}.weight"] = w
        out[f"{name}.bias"] = b
    return out


def feature_tensors(model: CoopModel) -> dict[str, np.ndarray]:
    out = {}
    with torch.no_grad():
        for i in range(len(model.arch["widths"])):
            for b in BITS:
                s, zp = model.quant.params(i, b)
                out[f"features.{i}.{b}.scale"] = s.float().numpy().copy()
                out[f"features.{i}.{b}.zero_point"] = zp.float().numpy().copy()
    return out


def empty_tensors(model: CoopModel, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``features.{i}.{b}.empty`` F32 [active channels]: the transmitted value of an empty cell at
    width i and b bits, i.e. what the int8 encoder (numpy reference, bit-identical with ONNX
    Runtime and the Swift engine) outputs in the interior of an all-zero BEV, requantized to b bits
    and dequantized. The server gives it to the cells a sparse frame leaves out."""
    from slimsplit_train.quantize import int8_chain_ref, quantize_tensor
    arch = {k: v for k, v in model.arch.items() if k != "server"}
    inp, outn = arch["input"], arch["output"]
    out = {}
    for i in range(len(arch["widths"])):
        xq = quantize_tensor(np.zeros((1, inp["channels"], inp["height"], inp["width"]), np.float32),
                             tensors[f"{inp['name']}.int8.{i}.qparams"])
        y = int8_chain_ref(arch, tensors, i, xq)[outn][0]
        v = y[:, y.shape[1] // 2, y.shape[2] // 2].astype(np.int32)           # an interior cell
        qp = tensors[f"{outn}.int8.{i}.qparams"]
        x = np.float32(qp[0]) * (v - np.int32(qp[1])).astype(np.float32)
        for b in BITS:
            sc = tensors[f"features.{i}.{b}.scale"]
            zp = tensors[f"features.{i}.{b}.zero_point"]
            code = np.clip(np.rint(x / sc + zp), 0, 2 ** b - 1).astype(np.float32)
            out[f"features.{i}.{b}.empty"] = ((code - zp) * sc).astype(np.float32)
    return out


def full_arch(model: CoopModel) -> dict:
    arch = {k: v for k, v in model.arch.items() if k != "server"}
    arch["server"] = server_arch(model)
    return arch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default="/work/data/run/ckpt.pt")
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--out", default=str(ROOT / "Models/slimsplit-bev.safetensors"))
    ap.add_argument("--calib", type=int, default=64, help="validation BEVs for int8 calibration")
    ap.add_argument("--onnx", action="store_true", default=True)
    a = ap.parse_args()
    torch.set_num_threads(2)
    model = load_ckpt(a.ckpt)
    enc = model.encoder
    enc.eval()
    val = FrameSet(Path(a.data) / "val/shards", frame_stride=5)
    step = max(1, val.bev.shape[0] // a.calib)
    calib = [val.bev[k:k + 1].float() for k in range(0, val.bev.shape[0], step)][: a.calib]
    enc_arch = {k: v for k, v in model.arch.items() if k != "server"}
    tensors = float_tensors(enc)
    tensors.update(quantize_net(enc, calib))
    check_tensors(enc_arch, tensors)            # the encoder part is a valid format-1 model
    tensors.update(server_tensors(model))
    tensors.update(feature_tensors(model))
    tensors.update(empty_tensors(model, tensors))
    arch = full_arch(model)
    validate_arch(arch)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": arch_json(arch)}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out), metadata=meta)
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(tensors)} tensors)")
    if a.onnx:
        import onnx
        from slimsplit_train.onnx_build import float_model, int8_chain_model
        wi = len(arch["widths"]) - 1
        folded = {s["name"]: fold_bn(enc, s["name"], wi) for s in enc_arch["layers"]}
        fm = float_model(enc_arch, folded, wi, 128, 128)
        qm = int8_chain_model(enc_arch, tensors, wi, 128, 128, float_io=True)
        for m, name in ((fm, "slimsplit-bev-encoder.onnx"), (qm, "slimsplit-bev-encoder-int8.onnx")):
            p = out.parent / name
            onnx.save(m, str(p))
            print(f"wrote {p} ({p.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
