#!/usr/bin/env python3
"""Train the deep-fusion model (slimsplit_train/deep.py; issue 12 experiment), warm-started from the
shipped model file.

    python training/train_deep.py --data /work/data --out /work/data/deep --steps 3000 --threads 2

Per step: a batch of frames, a random ego and a random subset of the others (all of them half of
the time); exact BEV augmentation; with probability --p-late every other agent's sample and pose
are the previous frame's (100 ms old); with probability --p-noise Gaussian pose noise (0.2 m /
0.2 deg or 0.4 m / 0.4 deg, per axis) on every other agent's pose used for the warp. One random
message configuration per step: bits (float / 8 / 4 / 2) and selection threshold tau (every cell /
0.05 / 0.1 / 0.2). Loss: the fused detections in the ego's grid (ground truth seen by any selected
agent) + 0.5 x each on-time agent's own detections in its own grid (ground truth it sees itself).
Writes OUT/ckpt.pt every 250 steps (``--resume`` continues from it) and OUT/loss.log.
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

from slimsplit_train.coop import (FrameSet, augment, boxes_to_frame, choose_agents, det_loss,  # noqa: E402
                                  in_grid, make_targets, theta_ego_from)
from slimsplit_train.deep import DeepModel, init_from_shipped, load_weights, save_weights  # noqa: E402

NOISE = ((0.2, 0.2), (0.4, 0.4))


def build_batch(ds: FrameSet, idxs, rng: random.Random, nrng: np.random.Generator, p_full=0.5, p_late=0.3,
                p_noise=0.5, aug=True):
    bevs, thetas, owner, tg_ego, tg_local, local_ok = [], [], [], [], [], []
    for n, fi in enumerate(idxs):
        fr = ds.frames[fi]
        na = len(fr["samples"])
        sel = choose_agents(na, rng, lambda: rng.random() < p_full)
        ego = sel[0]
        samples = fr["samples"][sel].copy()
        poses = fr["pose"][sel].copy()
        late = [False] * len(sel)
        prev = ds.index.get((fr["rec"], fr["frame"] - 1))
        if prev is not None and len(sel) > 1 and rng.random() < p_late:
            pf = ds.frames[prev]
            for a in range(1, len(sel)):
                samples[a] = pf["samples"][sel[a]]
                poses[a] = pf["pose"][sel[a]]
                late[a] = True
        b = ds.bev[samples].float()
        boxes = fr["boxes"]
        if aug:
            b, poses, boxes = augment(b, poses, boxes, rng)
        tracks = fr["box_tracks"]
        vis = fr["points"][:, sel].sum(1) >= 1
        be = boxes_to_frame(boxes, poses[0])
        own = tracks == fr["tracks"][ego]
        tg_ego.append(make_targets(be[vis & in_grid(be[:, :2]) & ~own], be[own]))
        for a, ag in enumerate(sel):
            bl = boxes_to_frame(boxes, poses[a])
            own_a = tracks == fr["tracks"][ag]
            va = fr["points"][:, ag] >= 1
            tg_local.append(make_targets(bl[va & in_grid(bl[:, :2]) & ~own_a], bl[own_a]))
            local_ok.append(not late[a])
        used = poses.copy()
        if len(sel) > 1 and rng.random() < p_noise:
            sx, sd = NOISE[rng.randrange(len(NOISE))]
            used[1:, :2] += nrng.normal(0, sx, (len(sel) - 1, 2))
            used[1:, 2] += np.deg2rad(nrng.normal(0, sd, len(sel) - 1))
        for p in used:
            thetas.append(theta_ego_from(used[0], p))
        bevs.append(b)
        owner += [n] * len(sel)

    def stack(tgs):
        return {k: torch.from_numpy(np.stack([t[k] for t in tgs])) for k in tgs[0]}
    return (torch.cat(bevs), torch.from_numpy(np.stack(thetas)).float(), torch.tensor(owner), stack(tg_ego),
            stack(tg_local), torch.tensor(local_ok))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--out", default="/work/data/deep")
    ap.add_argument("--init", default=str(ROOT / "Models/slimsplit-bev.safetensors"),
                    help="model file to warm-start the encoder, backbone and heads from")
    ap.add_argument("--msg-channels", type=int, default=16)
    ap.add_argument("--geometry", action="store_true",
                    help="the server also reads each agent's own boxes from its message and carries them, in the "
                         "ego's frame, through the warp (DeepModel.boxes_in_ego)")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--peer-loss", type=float, default=0.0,
                    help="weight of a detection loss on the server's reading of each agent's own boxes (--geometry)")
    ap.add_argument("--p-late", type=float, default=0.3)
    ap.add_argument("--p-noise", type=float, default=0.5)
    ap.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    ap.add_argument("--from-weights", default="",
                    help="fine-tune a trained deep model (save_weights file) instead of warm-starting from --init")
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    nrng = np.random.default_rng(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    ds = FrameSet(Path(a.data) / "train/shards")
    print(f"train: {len(ds)} frames, {ds.bev.shape[0]} samples ({time.time() - t0:.0f} s)", flush=True)

    from evaluate import load_model
    shipped = load_model(a.init)
    model = DeepModel(shipped.arch, a.msg_channels, geometry=a.geometry)
    init_from_shipped(model, shipped.tensors, shipped.encoder)
    if a.from_weights:
        model.load_state_dict(load_weights(a.from_weights).state_dict())
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    warm = max(1, a.steps // 30)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
    start = 0
    if a.resume and (out / "ckpt.pt").exists():
        ck = torch.load(out / "ckpt.pt", map_location="cpu", weights_only=False)
        model.load_state_dict(ck["state"])
        opt.load_state_dict(ck["opt"])
        sched.load_state_dict(ck["sched"])
        rng.setstate(ck["rng"])
        nrng.bit_generator.state = ck["nrng"]
        start = ck["step"]
        print(f"resumed at step {start}", flush=True)
    model.train()

    def save(step):
        torch.save({"arch": shipped.arch, "msg_channels": a.msg_channels, "geometry": a.geometry, "state": model.state_dict(),
                    "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": rng.getstate(),
                    "nrng": nrng.bit_generator.state, "step": step, "args": vars(a)}, out / "ckpt.pt.tmp")
        (out / "ckpt.pt.tmp").replace(out / "ckpt.pt")

    log = open(out / "loss.log", "a")
    t0 = time.time()
    for step in range(start, a.steps):
        idxs = [rng.randrange(len(ds)) for _ in range(a.batch)]
        bev, theta, owner, tg, tgl, ok = build_batch(ds, idxs, rng, nrng, p_late=a.p_late, p_noise=a.p_noise)
        bits = rng.choice([None, 8, 4, 2])
        tau = rng.choice([None, 0.05, 0.1, 0.2])
        opt.zero_grad(set_to_none=True)
        d, local = model.agent(bev, train=True)
        okl = {k: v[ok] for k, v in local.items()}
        tgo = {k: v[ok] for k, v in tgl.items()}
        hl, rl = det_loss(okl, tgo)
        sent = model.selection(local, tau)
        msg = model.message(d, bits)
        out_f = model.server(msg, sent, theta, owner, len(idxs))
        hf, rf = det_loss(out_f, tg)
        loss = hf + rf + 0.5 * (hl + rl)
        if a.peer_loss > 0 and model.geometry:
            # the server's reading of each agent's boxes from its message, against what the agent sees
            pb = model.peer_boxes(msg, sent)
            hp, rp = det_loss({k: v[ok] for k, v in pb.items()}, tgo)
            loss = loss + a.peer_loss * (hp + rp)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        sched.step()
        log.write(f"{step} {time.time() - t0:.1f} {sched.get_last_lr()[0]:.2e} {bits} {tau} {hf.item():.4f} "
                  f"{rf.item():.4f} {hl.item():.4f} {rl.item():.4f} {sent.mean().item():.3f}\n")
        if step % 25 == 0:
            log.flush()
            print(f"step {step} {time.time() - t0:.0f}s fused {float(hf + rf):.3f} local {float(hl + rl):.3f} "
                  f"sent {float(sent.mean()):.3f}", flush=True)
        if (step + 1) % 250 == 0:
            save(step + 1)
    save(a.steps)
    save_weights(model, out / "weights.safetensors",
                 {"steps": str(a.steps), "seed": str(a.seed), "command": " ".join(sys.argv)})
    print(f"done: {a.steps} steps in {time.time() - t0:.0f} s -> {out / 'ckpt.pt'}, {out / 'weights.safetensors'}",
          flush=True)


if __name__ == "__main__":
    main()
