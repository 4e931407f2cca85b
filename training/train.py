#!/usr/bin/env python3
"""Train the slimmable cooperative BEV detector (Configs/models/slimsplit-bev.yaml).

    python training/train.py --data /work/data --out /work/data/run --steps 2400

Per step (deterministic for a seed): a batch of frames; per frame a random ego and a random subset
of the other agents (1..N agents in all, the ego always present); exact BEV augmentation (world
y-mirror, per-agent 90-degree sensor rotations); one fusion mode (attention or max) for the step.
Sandwich rule over widths: the full width (trained on the ground truth, transmitted features in
float / 8 / 4 bits), the smallest width and one random middle width (ground truth + in-place
distillation from the full width's detached outputs, features in 8 / 4 / 2 bits). Writes
OUT/ckpt.pt and OUT/loss.log (one line per step).
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from slimsplit_train.arch import load_arch  # noqa: E402
from slimsplit_train.coop import (CoopModel, FrameSet, augment, boxes_to_frame, choose_agents, det_loss,  # noqa: E402
                                  in_grid, kd_loss, make_targets, theta_ego_from)


def build_batch(ds: FrameSet, idxs, rng: random.Random, aug: bool, full_agents: bool = False,
                full_agents_p: float = 0.0):
    """Stacked BEVs [A, 8, 128, 128], theta [A, 2, 3], owner [A], targets (torch). Each frame keeps
    all its agents with probability ``full_agents_p`` (always if ``full_agents``), else a random subset."""
    bevs, thetas, owner, tgs = [], [], [], []
    for n, fi in enumerate(idxs):
        fr = ds.frames[fi]
        na = len(fr["samples"])
        sel = choose_agents(na, rng, lambda: full_agents or rng.random() < full_agents_p)
        ego = sel[0]
        b = ds.bev[fr["samples"][sel]].float()
        poses = fr["pose"][sel]
        boxes = fr["boxes"]
        if aug:
            b, poses, boxes = augment(b, poses, boxes, rng)
        vis = fr["points"][:, sel].sum(1) >= 1
        be = boxes_to_frame(boxes, poses[0])
        ego_track = fr["tracks"][ego]
        own = fr["box_tracks"] == ego_track
        keep = vis & in_grid(be[:, :2]) & ~own
        tgs.append(make_targets(be[keep], be[own]))
        for p in poses:
            thetas.append(theta_ego_from(poses[0], p))
        bevs.append(b)
        owner += [n] * len(sel)
    tg = {k: torch.from_numpy(np.stack([t[k] for t in tgs])) for k in tgs[0]}
    return (torch.cat(bevs), torch.from_numpy(np.stack(thetas)).float(), torch.tensor(owner), tg)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--out", default="/work/data/run")
    ap.add_argument("--arch", default=str(ROOT / "Configs/models/slimsplit-bev.yaml"))
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-recordings", type=int, default=None)
    ap.add_argument("--frame-stride", type=int, default=1)
    ap.add_argument("--full-agents", type=float, default=0.5,
                    help="probability that a frame keeps all its agents (else a random subset with the ego)")
    ap.add_argument("--init", default=None, help="start from this checkpoint (fine-tuning; new layers keep their init)")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ds = FrameSet(Path(a.data) / "train/shards", frame_stride=a.frame_stride, max_recordings=a.max_recordings)
    print(f"train: {len(ds)} frames, {ds.bev.shape[0]} samples, {len(ds.recordings)} recordings "
          f"(loaded in {time.time() - t0:.0f} s)", flush=True)

    arch = load_arch(a.arch)
    model = CoopModel(arch)
    if a.init:
        ck = torch.load(a.init, map_location="cpu", weights_only=False)
        missing, unexpected = model.load_state_dict(ck["state"], strict=False)
        print(f"init from {a.init}: new {missing}, dropped {unexpected}", flush=True)
    model.train()
    nw = len(arch["widths"])
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    warm = max(1, a.steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))

    from tqdm import tqdm
    log = open(out / "loss.log", "w")
    log.write("step time_s lr mode t_bits s_bits loss_full hm_full reg_full loss_small loss_mid\n")
    order: list[int] = []
    t0 = time.time()
    bar = tqdm(range(a.steps), mininterval=5, file=sys.stdout)
    for step in bar:
        if len(order) < a.batch:
            perm = list(range(len(ds)))
            rng.shuffle(perm)
            order += perm
        idxs, order = order[: a.batch], order[a.batch:]
        bev, theta, owner, tg = build_batch(ds, idxs, rng, aug=True, full_agents_p=a.full_agents)
        mode = "att" if rng.random() < 0.6 else "max"
        t_bits = rng.choice([None, 8, 4])
        s_bits = rng.choice([8, 4, 2])
        mid = rng.choice(range(1, nw - 1))
        opt.zero_grad(set_to_none=True)
        # full width: ground truth
        f = model.encode(bev, nw - 1, t_bits)
        o_full = model.server(f, theta, owner, len(idxs), mode)
        hm, reg = det_loss(o_full, tg)
        loss_full = hm + reg
        loss_full.backward()
        teacher = {k: v.detach() for k, v in o_full.items()}
        losses = []
        for wi in (0, mid):
            f = model.encode(bev, wi, s_bits)
            o = model.server(f, theta, owner, len(idxs), mode)
            h2, r2 = det_loss(o, tg)
            l2 = 0.5 * (h2 + r2) + kd_loss(o, teacher, tg)
            l2.backward()
            losses.append(float(l2.detach()))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        el = time.time() - t0
        log.write(f"{step} {el:.1f} {sched.get_last_lr()[0]:.2e} {mode} {t_bits} {s_bits} {float(loss_full):.4f} "
                  f"{float(hm):.4f} {float(reg):.4f} {losses[0]:.4f} {losses[1]:.4f}\n")
        if step % 20 == 0:
            log.flush()
            bar.set_postfix(full=f"{float(loss_full):.3f}", small=f"{losses[0]:.3f}")
    log.close()
    torch.save({"arch": arch, "state": model.state_dict(), "steps": a.steps, "seed": a.seed,
                "wall_s": time.time() - t0, "args": vars(a)}, out / "ckpt.pt")
    print(f"done: {a.steps} steps in {time.time() - t0:.0f} s -> {out / 'ckpt.pt'}", flush=True)


if __name__ == "__main__":
    main()
