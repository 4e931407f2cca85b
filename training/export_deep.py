#!/usr/bin/env python3
"""Export the deep-fusion model (slimsplit_train/deep.py) as a SlimSplit model file the engine runs,
and its parity fixture.

    python training/export_deep.py --out Models/slimsplit-deep.safetensors \
        --fixture Tests/Fixtures/deep-parity.safetensors

The file (docs/model-format.md, "Deep-fusion model files") holds
  * the encoder, as in every model file: float weights, switchable BN and int8 tensors per width
    (min/max calibration on validation BEVs); the agent runs it at full width;
  * ``deep.agent.*`` (float, no BN): the agent's backbone (``deep.agent.backbone.{k}``), its own
    head (``deep.agent.head.{shared,heatmap,offset,size,yaw}``) and ``deep.agent.compress`` (1x1, 96 -> K);
    and the backbone and the head's shared 3x3 layer in int8 (``deep.agent.backbone.{k}.int8.*`` and
    ``deep.agent.head.shared.int8.*``: weight, weight_scale, bias, qparams), which read the int8
    encoder's output codes as they are (the input quantization, ``deep.agent.int8.input.qparams``, is
    the encoder output's at full width), calibrated by min/max on validation BEVs; the agent
    dequantizes the backbone's output for the compression and the shared layer's for the head's
    float 1x1 outputs;
  * ``deep.server.*`` (float): ``decompress`` (1x1, K -> 96, ReLU), ``peer_head.*``, ``rotate``
    (pose-conditioned 1x1, [96, 5 * 96, 1, 1]), ``score`` (1x1, 96 + 7 -> 1), ``fuse`` (3x3, 96 + 7 -> 96,
    ReLU), ``head.*``;
  * the message's quantizers ``features.{full width index}.{bits}.scale`` / ``.zero_point`` (K channels),
    and its residual codebooks ``features.{full width index}.codebook`` [levels, size, K] (``--codebook``,
    training/train_codebook.py) for codebook frames;
  * ``__metadata__.architecture``: the encoder's architecture plus ``deep`` (shapes, dilations, grid,
    decode), which the engine checks every tensor against;
  * ``__metadata__.rate_accuracy``: the message configurations (bits, tau as the threshold) with their
    bytes and AP@0.5 from ``training/evaluate_deep.py``'s clean-pose results (``--table``), which the
    adapting agent chooses from, as with every model file.

The fixture: two agents of a test frame (their float encoder maps and poses) with what PyTorch computes
from them: each agent's message before quantization, its cells sent at tau = 0.2, its own head's
outputs, and ego 0's fused head outputs from the other's float message at those cells and its boxes (decoded and
merged as the file says); and, for the
maps quantized as the int8 encoder's output, the int8 backbone's and the own head's shared layer's
output codes (numpy QLinearConv reference), the own head's outputs from those and its cells sent.
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

from slimsplit_train.arch import FORMAT, FORMAT_VERSION, arch_json, validate_arch  # noqa: E402
from slimsplit_train.coop import (GRID, MERGE_RULES, PEAK_RULES, FrameSet, decode, encoder_forward,  # noqa: E402
                                  merge_boxes, moved, theta_ego_from)
from slimsplit_train.deep import GEOMETRY_CHANNELS, DeepModel, load_weights  # noqa: E402
from slimsplit_train.model_io import check_tensors, float_tensors  # noqa: E402
from slimsplit_train.quantize import (qlinearconv_ref, qparams_from_range, quantize_net,  # noqa: E402
                                      quantize_tensor, quantize_weights)
from slimsplit_train.st_write import save_file  # noqa: E402

HEADS = ("heatmap", "offset", "size", "yaw")
FIXTURE_TAU = 0.2


def np32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().numpy().astype(np.float32))


def deep_tensors(m: DeepModel) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}

    def put(name, conv):
        out[f"{name}.weight"] = np32(conv.weight)
        out[f"{name}.bias"] = np32(conv.bias)

    def head(prefix, h):
        put(f"{prefix}.shared", h.shared[0])
        for n in HEADS:
            put(f"{prefix}.{n}", getattr(h, n))

    for k, blk in enumerate(m.backbone):
        put(f"deep.agent.backbone.{k}", blk[0])
    head("deep.agent.head", m.local_head)
    put("deep.agent.compress", m.compress)
    put("deep.server.decompress", m.decompress[0])
    head("deep.server.peer_head", m.peer_head)
    put("deep.server.rotate", m.rotate_conv)
    put("deep.server.score", m.score)
    put("deep.server.fuse", m.fuse_conv[0])
    head("deep.server.head", m.head)
    wi = len(m.arch["widths"]) - 1
    with torch.no_grad():
        for b in m.quant.bits:
            s, zp = m.quant.params(0, b)
            out[f"features.{wi}.{b}.scale"] = np32(s)
            out[f"features.{wi}.{b}.zero_point"] = np32(zp)
    return out


def rate_table(paths: list[Path], wi: int) -> str:
    """``rate_accuracy`` from evaluate_deep.py's JSON: its clean rows "deep, {bits} bit, ..." (decoded
    and merged as the model says), as entries (full width, bits, threshold = tau or 0, bytes, ap50)."""
    import re
    entries = []
    for r in (r for p in paths for r in json.loads(p.read_text())["results"]):
        m = re.fullmatch(r"deep, (?:(\d) bit|codebook (\d+) x (\d+)), (every cell|tau ([0-9.]+))", r["method"])
        if r["condition"] != "clean" or not m:
            continue
        e = {"width_index": wi, "threshold": float(m.group(5) or 0), "bytes": float(r["bytes"]),
             "ap50": round(float(r["ap50"]), 2)}
        if m.group(1):
            e["bits"] = int(m.group(1))
        else:
            e["bits"], e["payload"] = int(m.group(3)).bit_length() - 1, "codebook"
        if not any((x["bits"], x["threshold"], x.get("payload")) == (e["bits"], e["threshold"], e.get("payload"))
                   for x in entries):  # the first file's figure of a configuration evaluated twice
            entries.append(e)
    if not entries:
        sys.exit(f"export_deep: no clean 'deep, N bit, ...' rows in {', '.join(map(str, paths))}")
    return json.dumps({"source": "training/evaluate_deep.py (" + ", ".join(p.name for p in paths) + ")",
                       "entries": entries}, separators=(",", ":"))


def agent_int8_layers(m: DeepModel) -> list[tuple[str, torch.nn.Conv2d]]:
    """The agent's int8 layers in order: the backbone, then its own head's shared 3x3 convolution
    (which reads the backbone's output codes; the head's 1x1 outputs and the compression stay float)."""
    return [(f"deep.agent.backbone.{k}.int8", blk[0]) for k, blk in enumerate(m.backbone)] + \
        [("deep.agent.head.shared.int8", m.local_head.shared[0])]


@torch.no_grad()
def agent_int8(m: DeepModel, tensors: dict[str, np.ndarray], calib: list[torch.Tensor]) -> dict[str, np.ndarray]:
    """The agent's int8 tensors: input = the int8 encoder's output quantization at full width, each
    layer's (ReLU) output from min/max over the calibration BEVs (float model)."""
    wi = len(m.arch["widths"]) - 1
    layers = agent_int8_layers(m)
    hi = [0.0] * len(layers)
    for x in calib:
        f = encoder_forward(m.encoder, x, wi, False)
        for k, blk in enumerate(m.backbone):
            f = blk(f)
            hi[k] = max(hi[k], float(f.max()))
        hi[-1] = max(hi[-1], float(m.local_head.shared(f).max()))
    prev = tensors[f"{m.arch['output']}.int8.{wi}.qparams"]
    out = {"deep.agent.int8.input.qparams": prev.copy()}
    for (name, conv), h in zip(layers, hi):
        q, sc, b = quantize_weights(np32(conv.weight), np32(conv.bias), float(prev[0]))
        qp = qparams_from_range(0.0, h)
        out.update({f"{name}.weight": q, f"{name}.weight_scale": sc, f"{name}.bias": b, f"{name}.qparams": qp})
        prev = qp
    return out


def agent_int8_ref(m: DeepModel, tensors: dict[str, np.ndarray], f: np.ndarray) -> list[np.ndarray]:
    """uint8 [1, C, H, W] per int8 layer (numpy QLinearConv): the int8 backbone and the head's shared
    layer on one float encoder map quantized as the int8 encoder's output."""
    wi = len(m.arch["widths"]) - 1
    qp = tensors[f"{m.arch['output']}.int8.{wi}.qparams"]
    x = quantize_tensor(f[None], qp)
    outs = []
    for name, conv in agent_int8_layers(m):
        d = conv.dilation[0]
        y_qp = tensors[f"{name}.qparams"]
        x = qlinearconv_ref(x, qp, tensors[f"{name}.weight"], tensors[f"{name}.weight_scale"], tensors[f"{name}.bias"],
                            y_qp, (1, 1), (d, d), (d, d), 1)
        outs.append(x)
        qp = y_qp
    return outs


def deep_arch(m: DeepModel) -> dict:
    return {
        "doc": "deep fusion (training/slimsplit_train/deep.py): the agent runs encoder, backbone, its own head and "
               "sends compress(backbone) at the cells where sigmoid(own heatmap) > threshold, dilated 3x3; the "
               "server decompresses, reads each agent's boxes (peer_head), carries them through the warp in the "
               "ego's frame (7 geometry channels), fuses by attention over the agents that sent a cell, fuse, head",
        "input_channels": m.C, "backbone_channels": m.B, "head_channels": m.head.shared[0].out_channels,
        "message_channels": m.K, "geometry_channels": GEOMETRY_CHANNELS if m.geometry else 0,
        "backbone_dilations": [blk[0].dilation[0] for blk in m.backbone],
        "rotate_terms": ["1", "cos a", "sin a", "cos 2a", "sin 2a"],
        "bits": list(m.quant.bits),
        "grid": {"x_min": -GRID, "x_max": GRID, "y_min": -GRID, "y_max": GRID, "cell": 2.0, "height": 32, "width": 32},
        "decode": {"yaw_encoding": "double_angle", "peak_threshold": 0.05, "top_k": 60, "nms_iou": 0.1,
                   "peaks": m.peaks, "merge": m.merge},
    }


@torch.no_grad()
def fixture(m: DeepModel, ds: FrameSet, path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Two agents of the first test frame that has at least two."""
    fr = next(f for f in ds.frames if len(f["samples"]) >= 2 and f["frame"] > 0)
    idx = [int(s) for s in fr["samples"][:2]]
    poses = np.asarray(fr["pose"][:2], np.float64)
    bev = ds.bev[idx].float()
    f = encoder_forward(m.encoder, bev, len(m.arch["widths"]) - 1, False)
    d = m.backbone(f)
    local = m.local_head(d)
    c = m.compress(d)
    sent = m.selection(local, FIXTURE_TAU)
    theta = torch.from_numpy(np.stack([theta_ego_from(poses[0], poses[j]) for j in range(2)])).float()
    fused = m.server(c, sent, theta, torch.zeros(2, dtype=torch.long), 1)
    t = {"features": np32(f), "poses": poses.astype(np.float32), "theta": np32(theta), "message": np32(c),
         "sent": np32(sent)}
    refs = [agent_int8_ref(m, tensors, t["features"][k]) for k in range(2)]
    t["backbone_q"] = np.concatenate([r[-2] for r in refs])
    t["head_q"] = np.concatenate([r[-1] for r in refs])
    # The own head's outputs on the int8 path: its 1x1 layers on the dequantized shared codes.
    hq = tensors["deep.agent.head.shared.int8.qparams"]
    hidden = torch.from_numpy((t["head_q"].astype(np.float32) - hq[1]) * hq[0])
    local_q = {n: getattr(m.local_head, n)(hidden) for n in HEADS}
    t["sent_q"] = np32(m.selection(local_q, FIXTURE_TAU))
    for n in HEADS:
        t[f"local.{n}"] = np32(local[n])
        t[f"local_q.{n}"] = np32(local_q[n])
        t[f"fused.{n}"] = np32(fused[n])
    # Ego 0's boxes as the server gives them: the fused head decoded and merged as the file says
    # (with both agents' boxes read from their messages), rows (x, y, l, w, yaw, score).
    b, s = decode(fused, peaks=m.peaks)[0]
    if m.merge == "weighted":
        peer = m.read_boxes(c, sent)
        cand = [b] + [moved(pb, poses[j], poses[0]) for j, (pb, _) in enumerate(peer)]
        b, s = merge_boxes(b, s, np.concatenate(cand), np.concatenate([s] + [ps for _, ps in peer]))
    t["fused.boxes"] = np.concatenate([b, s[:, None]], 1).astype(np.float32).reshape(-1, 6)
    save_file(t, str(path), metadata={"tau": str(FIXTURE_TAU), "frame": f"{fr['rec']}:{fr['frame']}"})
    print(f"wrote {path} ({path.stat().st_size} bytes); sent cells {int(sent.sum())} of {sent.numel()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=str(HERE / "checkpoints/deep-fusion.safetensors"))
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--out", default=str(ROOT / "Models/slimsplit-deep.safetensors"))
    ap.add_argument("--fixture", default="", help="also write the parity fixture here")
    ap.add_argument("--table", default=str(ROOT / "docs/bench/deep-fusion-eval.json"),
                    help="evaluate_deep.py JSON files (comma-separated) whose clean results become the "
                         "rate-accuracy table ('' for none)")
    ap.add_argument("--codebook", default=str(HERE / "checkpoints/deep-codebook.safetensors"),
                    help="residual codebooks (training/train_codebook.py; '' for none)")
    ap.add_argument("--calib", type=int, default=64, help="validation BEVs for the encoder's int8 calibration")
    ap.add_argument("--peaks", choices=PEAK_RULES, default=None,
                    help="the file's decode.peaks (default: DeepModel.peaks)")
    ap.add_argument("--merge", choices=MERGE_RULES, default=None,
                    help="the file's decode.merge (default: DeepModel.merge)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    m = load_weights(a.ckpt)
    if a.peaks:
        m.peaks = a.peaks
    if a.merge:
        m.merge = a.merge
    if not m.geometry:
        sys.exit("export_deep: the engine runs the geometry variant only (train_deep.py --geometry)")
    enc = m.encoder
    enc.eval()
    val = FrameSet(Path(a.data) / "val/shards", frame_stride=5)
    step = max(1, val.bev.shape[0] // a.calib)
    calib = [val.bev[k:k + 1].float() for k in range(0, val.bev.shape[0], step)][: a.calib]
    enc_arch = {k: v for k, v in m.arch.items() if k not in ("server", "deep")}
    tensors = float_tensors(enc)
    tensors.update(quantize_net(enc, calib))
    check_tensors(enc_arch, tensors)
    tensors.update(deep_tensors(m))
    tensors.update(agent_int8(m, tensors, calib))
    if a.codebook:
        from safetensors.numpy import load_file
        tensors[f"features.{len(m.arch['widths']) - 1}.codebook"] = load_file(a.codebook)["codebook"]
    arch = dict(enc_arch)
    arch["name"] = "slimsplit-deep"  # the model ID agents announce in Hello
    arch["deep"] = deep_arch(m)
    validate_arch(arch)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": arch_json(arch)}
    if a.table:
        meta["rate_accuracy"] = rate_table([Path(p) for p in a.table.split(",")], len(m.arch["widths"]) - 1)
    out = Path(a.out)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out), metadata=meta)
    print(f"wrote {out} ({out.stat().st_size} bytes, {len(tensors)} tensors)")
    if a.fixture:
        fixture(m, FrameSet(Path(a.data) / "test/shards"), Path(a.fixture), tensors)


if __name__ == "__main__":
    main()
