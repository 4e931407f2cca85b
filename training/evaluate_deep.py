#!/usr/bin/env python3
"""Offline evaluation of the deep-fusion model (slimsplit_train/deep.py) against late fusion of the
same agents' own detections, under the conditions of issue 12.

    python training/evaluate_deep.py --ckpt /work/data/deep/ckpt.pt --data /work/data --json /work/data/deep/eval.json

Same convention as training/evaluate.py (every agent in turn the ego, ground truth seen by >= 1
agent within the ego's +-32 m, own vehicle excluded, AP@0.3/0.5/0.7 pooled over ego-frames), on
the test split (all its recordings), every --frame-stride-th frame.

Conditions (applied to every other agent, identically for every method; the noise is drawn once
per ego-frame and condition from a fixed seed): clean; pose noise 0.2 m / 0.2 deg and
0.4 m / 0.4 deg (sigma per axis and of yaw); 100 ms late (the other agents' previous frame and
its pose); noisy = 0.2 m / 0.2 deg + 100 ms (V2XSet).

Methods: single agent (the agent's own head); late fusion (each agent's own detections moved into
the ego's frame by the, possibly noisy, poses, rotated NMS IoU 0.1; ~20 bytes a box); deep fusion
at message configurations (bits, tau). Bytes: payload per agent-frame, mean over the ego-frames'
other agents: 128-byte cell bitmask (when tau is set) + the selected cells' K codes bit-packed,
LZ4 block; float: float32 K x 32 x 32, LZ4.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from evaluate import APAccum, keep_scored, lz4_size, pack_bits  # noqa: E402
from slimsplit_train.coop import (MERGE_RULES, PEAK_RULES, FrameSet, boxes_to_frame, decode, in_grid,  # noqa: E402
                                  merge_boxes, moved, rotated_iou, rotated_nms, theta_ego_from)
from slimsplit_train.deep import load_weights  # noqa: E402

IOUS = (0.3, 0.5, 0.7)
CONDITIONS = {"clean": (None, False), "noise 0.2": ((0.2, 0.2), False), "noise 0.4": ((0.4, 0.4), False),
              "late 100 ms": (None, True), "noisy (0.2 + 100 ms)": ((0.2, 0.2), True)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ckpt", default=str(HERE / "checkpoints/deep-fusion.safetensors"),
                    help="weights: training/checkpoints/*.safetensors or a training run's ckpt.pt")
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--frame-stride", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="/work/data/deep/eval.json")
    ap.add_argument("--configs", default="none:none,8:none,4:0.1,2:0.1,4:0.2,2:0.2,2:0.3",
                    help="message configurations bits:tau (none = float / every cell; vq = the residual codebook)")
    ap.add_argument("--codebook", default=str(HERE / "checkpoints/deep-codebook.safetensors"),
                    help="residual codebooks for the 'vq' configurations (training/train_codebook.py)")
    ap.add_argument("--conditions", default=",".join(CONDITIONS))
    ap.add_argument("--shipped", default=str(HERE.parent / "Models/slimsplit-bev.safetensors"),
                    help="also late fusion of this model file's single-agent detections ('' to skip)")
    ap.add_argument("--peaks", choices=PEAK_RULES, default=None,
                    help="how every head is decoded (coop.decode; default: DeepModel.peaks, what export_deep writes)")
    ap.add_argument("--merge", choices=MERGE_RULES, default=None,
                    help="how detections are merged (coop.merge_boxes; default: DeepModel.merge)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    model = load_weights(a.ckpt)
    if a.peaks:
        model.peaks = a.peaks
    if a.merge:
        model.merge = a.merge
    print(f"decode: {model.peaks}, merge: {model.merge}", flush=True)
    ds = FrameSet(Path(a.data) / "test/shards")
    frames = [k for k, f in enumerate(ds.frames) if f["frame"] % a.frame_stride == 0 and f["frame"] > 0]
    need = set()
    for fi in frames:
        fr = ds.frames[fi]
        need.update(int(s) for s in fr["samples"])
        prev = ds.index.get((fr["rec"], fr["frame"] - 1))
        if prev is not None:
            need.update(int(s) for s in ds.frames[prev]["samples"])
    need = sorted(need)
    comp, heat, dets = {}, {}, {}
    with torch.no_grad():
        for k in range(0, len(need), 64):
            idx = need[k:k + 64]
            d, local = model.agent(ds.bev[idx].float())
            c = model.compress(d)
            dd = decode(local, peaks=model.peaks)
            for n, s in enumerate(idx):
                comp[s] = c[n]
                heat[s] = local["heatmap"][n]
                dets[s] = dd[n]
    print(f"{len(frames)} frames, {len(need)} samples encoded in {time.time() - t0:.0f} s", flush=True)

    items = [(fi, e) for fi in frames for e in range(len(ds.frames[fi]["samples"]))]

    def gt_for(fr, e):
        be = boxes_to_frame(fr["boxes"], fr["pose"][e])
        vis = fr["points"].sum(1) >= 1
        own = fr["box_tracks"] == fr["tracks"][e]
        keep = vis & in_grid(be[:, :2]) & ~own
        return be[keep][:, [0, 1, 3, 4, 6]], be[own][:, [0, 1, 3, 4, 6]], fr["points"][keep].astype(bool).sum(1)

    GT = {it: gt_for(ds.frames[it[0]], it[1]) for it in items}

    def inputs(fi, e, cond):
        """(samples, poses used for the warp) of the ego (first) and the others under a condition."""
        noise, late = CONDITIONS[cond]
        fr = ds.frames[fi]
        na = len(fr["samples"])
        order = [e] + [j for j in range(na) if j != e]
        samples = fr["samples"][order].copy()
        poses = fr["pose"][order].copy()
        prev = ds.index.get((fr["rec"], fr["frame"] - 1))
        if late and prev is not None:
            samples[1:] = ds.frames[prev]["samples"][order[1:]]
            poses[1:] = ds.frames[prev]["pose"][order[1:]]
        if noise is not None and na > 1:
            g = np.random.default_rng(fi * 16 + e)
            poses[1:, :2] += g.normal(0, noise[0], (na - 1, 2))
            poses[1:, 2] += np.deg2rad(g.normal(0, noise[1], na - 1))
        return samples, poses

    def score(res):
        acc = {"all": APAccum(), "seen1": APAccum(), "seen2": APAccum()}
        for it, (b, s) in zip(items, res):
            g, own, nseen = GT[it]
            b, s = keep_scored(b, s, own)
            acc["all"].add(b, s, g)
            # split by how many agents see an object: detections matched to the other part are left out
            for key, m in (("seen1", nseen == 1), ("seen2", nseen >= 2)):
                if len(b) and (~m).any():
                    iou = rotated_iou(b, g[~m])
                    drop = (iou >= 0.5).any(1)
                    acc[key].add(b[~drop], s[~drop], g[m])
                else:
                    acc[key].add(b, s, g[m])
        out = {k: v.result() for k, v in acc.items()}
        return {"ap30": out["all"][0.3], "ap50": out["all"][0.5], "ap70": out["all"][0.7],
                "ap50_seen1": out["seen1"][0.5], "ap50_seen2": out["seen2"][0.5]}

    results = []

    def record(method, cond, res, nbytes):
        r = {"method": method, "condition": cond, "bytes": nbytes, **score(res)}
        results.append(r)
        print(f"{method:34s} {cond:22s} bytes {nbytes:>8}  AP@.3/.5/.7 {r['ap30']:.1f} {r['ap50']:.1f} "
              f"{r['ap70']:.1f}  seen1/2+ {r['ap50_seen1']:.1f} {r['ap50_seen2']:.1f}  ({time.time() - t0:.0f} s)",
              flush=True)

    # single agent
    record("single agent", "clean", [dets[int(ds.frames[fi]["samples"][e])] for fi, e in items], 0)

    configs = []
    for c in filter(None, a.configs.split(",")):
        b, t = c.split(":")
        configs.append((None if b == "none" else b if b == "vq" else int(b), None if t == "none" else float(t)))
    books = None
    if any(b == "vq" for b, _ in configs):
        from safetensors.torch import load_file
        from slimsplit_train import codebook
        books = load_file(a.codebook)["codebook"]
        vq_bits = codebook.index_bits(books.shape[1])

    def message(s, bits, tau):
        c = comp[s][None]
        m = codebook.quantize_map(c[0], books)[None] if bits == "vq" else model.quant(c, 0, bits)
        sent = model.selection({"heatmap": heat[s][None]}, tau)
        return m[0], sent[0]

    def msg_bytes(s, bits, tau):
        c = comp[s][None]
        sent = model.selection({"heatmap": heat[s][None]}, tau)[0, 0].numpy() > 0.5
        if bits is None:
            return lz4_size(c[0].numpy().astype(np.float32).tobytes())
        if bits == "vq":
            # the indices level by level over the sent cells (PROTOCOL.md 4.2, quant_mode 2)
            x = c[0].permute(1, 2, 0).reshape(-1, c.shape[1])[torch.from_numpy(sent.ravel())]
            codes, b = codebook.encode(x, books).T.numpy(), vq_bits
        else:
            codes, b = model.quant.codes(c, 0, bits)[0].numpy()[:, sent], bits
        mask = np.packbits(sent.ravel(), bitorder="little").tobytes() if tau is not None else b""
        return lz4_size(mask + pack_bits(codes, b))

    # the shipped model's single-agent detections (its server with the agent's map alone): the
    # late fusion the live system runs today (slimsplit eval --late-fusion)
    shipped_dets = {}
    if a.shipped:
        from evaluate import load_model
        from slimsplit_train.coop import encoder_forward
        sm = load_model(a.shipped)
        full = len(sm.arch["widths"]) - 1
        with torch.no_grad():
            for k in range(0, len(need), 64):
                idx = need[k:k + 64]
                f = encoder_forward(sm.encoder, ds.bev[idx].float(), full, False)
                th = torch.eye(2, 3).repeat(len(idx), 1, 1)
                for s, d in zip(idx, decode(sm.server(f, th, torch.arange(len(idx)), len(idx)))):
                    shipped_dets[s] = d
        record("single agent (shipped model)", "clean",
               [shipped_dets[int(ds.frames[fi]["samples"][e])] for fi, e in items], 0)

    def late_fusion(cond, own, merge):
        """Every agent's own detections moved into the ego's frame by the condition's poses, rotated
        NMS, and with merge "weighted" averaged per object (coop.merge_boxes)."""
        res, nb = [], []
        for fi, e in items:
            samples, poses = inputs(fi, e, cond)
            bs, ss = [], []
            for n, (s, p) in enumerate(zip(samples, poses)):
                b, sc = own[int(s)]
                if n > 0:
                    nb.append(len(b) * 20)
                    b = moved(b, p, poses[0])
                bs.append(b)
                ss.append(sc)
            b, sc = np.concatenate(bs), np.concatenate(ss)
            k = rotated_nms(b, sc, 0.1)
            res.append(merge_boxes(b[k], sc[k], b, sc) if merge == "weighted" else (b[k], sc[k]))
        return res, int(round(np.mean(nb))) if nb else 0

    def fused_merge(cond, fused, peer):
        """The fused head's detections merged with every agent's boxes read from its message, of the
        agents whose data is current (the ego's, and the others' unless 100 ms late: older than
        coop.MERGE_MAX_AGE_S)."""
        late = CONDITIONS[cond][1]
        res = []
        for (fi, e), (fb, fs) in zip(items, fused):
            samples, poses = inputs(fi, e, cond)
            bs, ss = [fb], [fs]
            for n, (s, p) in enumerate(zip(samples, poses)):
                if n > 0 and late and ds.index.get((ds.frames[fi]["rec"], ds.frames[fi]["frame"] - 1)) is not None:
                    continue
                b, sc = peer[int(s)]
                bs.append(moved(b, p, poses[0]) if n > 0 else b)
                ss.append(sc)
            res.append(merge_boxes(fb, fs, np.concatenate(bs), np.concatenate(ss)))
        return res

    peers = {}  # (bits, tau) -> every sample's boxes read from its message
    for cond in a.conditions.split(","):
        record("late fusion (own boxes)", cond, *late_fusion(cond, dets, model.merge))
        if model.merge != "nms":
            # the literature's late fusion (OpenCOOD, V2X-ViT): NMS alone
            record("late fusion (own boxes, NMS)", cond, *late_fusion(cond, dets, "nms"))
        if shipped_dets:
            # the shipped model's file has no decode.merge: NMS, as the live server runs it
            record("late fusion (shipped model's boxes)", cond, *late_fusion(cond, shipped_dets, "nms"))
        for bits, tau in configs:
            res, nb = [], []
            with torch.no_grad():
                for k in range(0, len(items), 32):
                    chunk = items[k:k + 32]
                    ms, sents, th, ow = [], [], [], []
                    for n, (fi, e) in enumerate(chunk):
                        samples, poses = inputs(fi, e, cond)
                        for j, (s, p) in enumerate(zip(samples, poses)):
                            m, sn = message(int(s), bits, tau)
                            ms.append(m)
                            sents.append(sn)
                            th.append(theta_ego_from(poses[0], p))
                            ow.append(n)
                            if j > 0 and len(nb) < 600:
                                nb.append(msg_bytes(int(s), bits, tau))
                    out = model.server(torch.stack(ms), torch.stack(sents), torch.from_numpy(np.stack(th)).float(),
                                       torch.tensor(ow), len(chunk))
                    res += decode(out, peaks=model.peaks)
            kind = "float" if bits is None else f"codebook {books.shape[0]} x {books.shape[1]}" if bits == "vq" \
                else f"{bits} bit"
            name = f"deep, {kind}, " + \
                   ("every cell" if tau is None else f"tau {tau}")
            if model.merge == "weighted" and model.geometry:
                # every agent's boxes as the server reads them from its message (no extra bytes)
                if (bits, tau) not in peers:
                    peer = peers[(bits, tau)] = {}
                    with torch.no_grad():
                        for k in range(0, len(need), 64):
                            idx = need[k:k + 64]
                            ms, sn = zip(*(message(q, bits, tau) for q in idx))
                            peer.update(zip(idx, model.read_boxes(torch.stack(ms), torch.stack(sn))))
                res = fused_merge(cond, res, peers[(bits, tau)])
            record(name, cond, res, int(round(np.mean(nb))))
    Path(a.json).write_text(json.dumps({"ckpt": a.ckpt, "frames": len(frames), "ego_frames": len(items),
                                        "recordings": ds.recordings, "results": results}, indent=1))
    write_table(results, Path(a.json).with_suffix(".md"))
    print(f"done in {time.time() - t0:.0f} s -> {a.json}")


def write_table(results, path: Path) -> None:
    """One row per method, AP@0.5 / AP@0.7 under each condition (the table in docs/evaluation.md)."""
    conds = list(dict.fromkeys(r["condition"] for r in results if r["condition"] != "clean"))
    methods = list(dict.fromkeys(r["method"] for r in results))
    lines = ["| method | bytes / agent-frame | clean | " + " | ".join(conds) + " |",
             "|---|---:|---|" + "---|" * len(conds)]
    for m in methods:
        by = {r["condition"]: r for r in results if r["method"] == m}
        cells = [f"{by[c]['ap50']:.1f} / {by[c]['ap70']:.1f}" if c in by else "same" for c in ["clean"] + conds]
        lines.append(f"| {m} | {next(iter(by.values()))['bytes']:,} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
