#!/usr/bin/env python3
"""Fit the deep-fusion message's residual codebooks (slimsplit_train/codebook.py) on training frames.

    python training/train_codebook.py --data /work/data --out training/checkpoints/deep-codebook.safetensors

Runs the deep model's agent on every --frame-stride-th training frame, takes the message vectors
(the 1x1 compression, K floats) at the cells each agent sends at --tau (its own heatmap, dilated 3x3),
and fits --levels codebooks of --size codewords by residual k-means. Deterministic for a given data
set (fixed seeds); a few minutes on 2 cores. training/export_deep.py puts the result into the model file.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from slimsplit_train.codebook import encode, decode, fit, index_bits  # noqa: E402
from slimsplit_train.coop import FrameSet  # noqa: E402
from slimsplit_train.deep import load_weights  # noqa: E402
from slimsplit_train.st_write import save_file  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=str(HERE / "checkpoints/deep-fusion.safetensors"))
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--out", default=str(HERE / "checkpoints/deep-codebook.safetensors"))
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--tau", type=float, default=0.2)
    ap.add_argument("--frame-stride", type=int, default=4)
    ap.add_argument("--max-vectors", type=int, default=60000)
    ap.add_argument("--iters", type=int, default=25)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    index_bits(a.size)
    t0 = time.time()
    model = load_weights(a.ckpt)
    ds = FrameSet(Path(a.data) / "train/shards", frame_stride=a.frame_stride)
    samples = sorted({int(s) for f in ds.frames for s in f["samples"] if s >= 0})
    vecs = []
    with torch.no_grad():
        for k in range(0, len(samples), 64):
            idx = samples[k:k + 64]
            d, local = model.agent(ds.bev[idx].float())
            c = model.compress(d)
            sent = model.selection(local, a.tau)[:, 0] > 0.5
            vecs.append(c.permute(0, 2, 3, 1)[sent])
    x = torch.cat(vecs)
    g = torch.Generator().manual_seed(0)
    if len(x) > a.max_vectors:
        x = x[torch.randperm(len(x), generator=g)[: a.max_vectors]]
    print(f"{len(samples)} samples, {len(x)} sent-cell vectors of {x.shape[1]} ({time.time() - t0:.0f} s)", flush=True)
    books = fit(x, a.levels, a.size, a.iters)
    rec = decode(encode(x, books), books)
    rel = float(((rec - x) ** 2).sum() / (x ** 2).sum())
    print(f"codebook {a.levels} x {a.size}: relative squared error {rel:.4f} ({time.time() - t0:.0f} s)")
    save_file({"codebook": books.numpy().astype(np.float32)}, a.out,
              metadata={"levels": str(a.levels), "size": str(a.size), "tau": str(a.tau), "vectors": str(len(x)),
                        "relative_squared_error": f"{rel:.5f}", "ckpt": Path(a.ckpt).name})
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
