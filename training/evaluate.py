#!/usr/bin/env python3
"""Evaluate the cooperative detector on the test scenes: BEV AP at IoU 0.3 / 0.5 / 0.7 (rotated
boxes), V2X convention, and bytes per transmitted map.

    python training/evaluate.py --model Models/slimsplit-bev.safetensors --data /work/data \
        --png docs/rate_accuracy.png

Convention: every agent of every evaluated frame is in turn the ego. Ground truth: the frame's
vehicles whose centre lies in the ego's +-32 m square and that at least one agent of the frame
sees (>= 1 LiDAR point), except the ego's own vehicle; detections whose centre falls inside the
ego's own vehicle box (+0.5 m) are ignored (neither true nor false positives). Detections are
matched greedily by score (each ground-truth box once); AP is the area under the interpolated
precision-recall curve (all points), over all ego-frames of the test set pooled.

Bytes: each non-ego agent sends one map per frame: the integer codes of its active channels
(channel-major), bit-packed (8 / 4 / 2 bits), then LZ4 block compression (``lz4.block``, no size
header); with sparsity a 128-byte cell bitmask is sent and only the kept cells' codes. Float: the
float32 map, LZ4-compressed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from slimsplit_train.arch import active_channels  # noqa: E402
from slimsplit_train.coop import (BITS, GRID, CoopModel, FrameSet, Server, box_corners, boxes_to_frame,  # noqa: E402
                                  decode, encoder_forward, in_grid, rotated_iou, rotated_nms, rot,
                                  theta_ego_from, wrap)
from slimsplit_train.model_io import net_from_tensors  # noqa: E402

IOUS = (0.3, 0.5, 0.7)


# ---------------------------------------------------------------------------------------------
# model from the exported file (server from its BN-folded tensors)


def load_model(path: str) -> CoopModel:
    from safetensors import safe_open
    with safe_open(path, framework="numpy") as f:
        arch = json.loads(f.metadata()["architecture"])
        t = {k: f.get_tensor(k) for k in f.keys()}
    srv = arch["server"]
    yaml_like = {k: v for k, v in arch.items() if k != "server"}
    Cb = next(l for l in srv["layers"] if l["name"] == "backbone.0")["out_channels"]
    Ch = next(l for l in srv["layers"] if l["name"] == "head.shared")["out_channels"]
    yaml_like["server"] = {"feature_channels": srv["input"]["channels"], "backbone_channels": Cb,
                           "head_channels": Ch, "classes": srv["classes"]}
    m = CoopModel(yaml_like)
    enc_t = {k: v for k, v in t.items() if not k.startswith(("server.", "features."))}
    m.encoder = net_from_tensors(yaml_like, enc_t)
    s = m.server
    with torch.no_grad():
        def put(conv, name):
            conv.weight.copy_(torch.from_numpy(t[f"{name}.weight"]))
            conv.bias = torch.nn.Parameter(torch.from_numpy(t[f"{name}.bias"]).clone())
        put(s.rotate_conv, "server.fusion.rotate")
        put(s.score, "server.fusion.score")
        for k, blk in enumerate(s.backbone):
            put(blk[0], f"server.backbone.{k}")
            blk[1] = torch.nn.Identity()   # BN folded
        put(s.shared[0], "server.head.shared")
        for n in ("heatmap", "offset", "size", "yaw"):
            put(getattr(s, n), f"server.head.{n}")
        for i in range(len(arch["widths"])):
            for b in BITS:
                m.quant.scale[f"{i}_{b}"].copy_(torch.from_numpy(t[f"features.{i}.{b}.scale"]))
                m.quant.zp[f"{i}_{b}"].copy_(torch.from_numpy(t[f"features.{i}.{b}.zero_point"]))
    m.eval()
    m.tensors = t
    return m


# ---------------------------------------------------------------------------------------------
# AP


def ap_from(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    if n_gt == 0:
        return float("nan")
    o = np.argsort(-scores, kind="stable")
    tp = tp[o].astype(float)
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1 - tp)
    rec = ctp / n_gt
    prec = ctp / np.maximum(ctp + cfp, 1e-9)
    mrec = np.concatenate([[0], rec, [1]])
    mpre = np.concatenate([[0], prec, [0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


class APAccum:
    def __init__(self):
        self.s = {t: [] for t in IOUS}
        self.tp = {t: [] for t in IOUS}
        self.n_gt = 0

    def add(self, det_b, det_s, gt_b):
        self.n_gt += len(gt_b)
        iou = rotated_iou(det_b, gt_b) if len(det_b) and len(gt_b) else np.zeros((len(det_b), len(gt_b)))
        o = np.argsort(-det_s, kind="stable")
        for t in IOUS:
            used = np.zeros(len(gt_b), bool)
            tp = np.zeros(len(det_b), bool)
            for d in o:
                if len(gt_b) == 0:
                    break
                cand = np.where(~used, iou[d], -1)
                g = int(np.argmax(cand))
                if cand[g] >= t:
                    used[g] = True
                    tp[d] = True
            self.s[t].append(det_s)
            self.tp[t].append(tp)

    def result(self):
        if not self.s[IOUS[0]]:
            return {t: float("nan") for t in IOUS}
        return {t: 100 * ap_from(np.concatenate(self.s[t]), np.concatenate(self.tp[t]), self.n_gt) for t in IOUS}


def keep_scored(b: np.ndarray, s: np.ndarray, own: np.ndarray):
    """Detections ``b`` [N, 5] (x, y, l, w, yaw), scores ``s``: those inside the grid and not inside
    an ``own`` vehicle box (+0.5 m), which the convention ignores."""
    if len(b) == 0:
        return b, s
    k = in_grid(b[:, :2])
    for o in own:
        d = (b[:, :2] - o[:2]) @ rot(o[4])
        k &= ~((np.abs(d[:, 0]) < o[2] / 2 + 0.5) & (np.abs(d[:, 1]) < o[3] / 2 + 0.5))
    return b[k], s[k]


# ---------------------------------------------------------------------------------------------
# transmission size


def pack_bits(codes: np.ndarray, bits: int) -> bytes:
    """Values of ``bits`` bits (1 ... 8) packed LSB first, as PROTOCOL.md section 4.2 packs them."""
    c = codes.astype(np.uint8).ravel()
    stream = ((c[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8).ravel()
    return np.packbits(stream, bitorder="little").tobytes()


def lz4_size(b: bytes) -> int:
    import lz4.block
    return len(lz4.block.compress(b, store_size=False))


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=str(ROOT / "Models/slimsplit-bev.safetensors"))
    ap.add_argument("--data", default="/work/data")
    ap.add_argument("--frame-stride", type=int, default=3, help="evaluate every n-th test frame")
    ap.add_argument("--png", default=str(ROOT / "docs/rate_accuracy.png"))
    ap.add_argument("--json", default="/work/data/eval.json")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="a few configurations only (smoke test)")
    ap.add_argument("--write-table", action="store_true",
                    help="store the rate-accuracy table (every width x bits, with and without sparsity) in the "
                         "model file's metadata as 'rate_accuracy', for the agents' adaptation")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    t_start = time.time()
    model = load_model(a.model)
    nw = len(model.arch["widths"])
    ds = FrameSet(Path(a.data) / "test/shards")
    eval_frames = [k for k, f in enumerate(ds.frames) if f["frame"] % a.frame_stride == 0 and f["frame"] > 0]
    print(f"test: {len(ds)} frames, evaluating {len(eval_frames)} frames", flush=True)

    # float encoder outputs per width for every sample (+ the all-empty-BEV feature per width)
    feats = {}
    empty = {}
    with torch.no_grad():
        for wi in range(nw):
            fs = [encoder_forward(model.encoder, ds.bev[k:k + 64].float(), wi, False)
                  for k in range(0, ds.bev.shape[0], 64)]
            feats[wi] = torch.cat(fs)
            empty[wi] = encoder_forward(model.encoder, torch.zeros(1, 8, 128, 128), wi, False)[0]
    print(f"encoded in {time.time() - t_start:.0f} s", flush=True)

    rng = np.random.default_rng(0)
    ego_items = [(fi, e) for fi in eval_frames for e in range(len(ds.frames[fi]["samples"]))]

    def gt_for(fr, e):
        pose = fr["pose"][e]
        be = boxes_to_frame(fr["boxes"], pose)
        vis = fr["points"].sum(1) >= 1
        own = fr["box_tracks"] == fr["tracks"][e]
        keep = vis & in_grid(be[:, :2]) & ~own
        g = be[keep][:, [0, 1, 3, 4, 6]]
        ob = be[own][:, [0, 1, 3, 4, 6]]
        return g, ob

    filt = keep_scored
    GT = {(fi, e): gt_for(ds.frames[fi], e) for fi, e in ego_items}

    def feat_of(fr_idx, agent, wi, bits, sparse=None):
        f = feats[wi][ds.frames[fr_idx]["samples"][agent]][None]
        if bits is not None:
            f = model.quant(f, wi, bits)
        if sparse is not None:
            # unsent cells: the model's empty-cell value (features.{i}.{b}.empty), as the server fills them
            keep = (f - empty[wi][None]).norm(dim=1, keepdim=True) > sparse
            fill = (torch.from_numpy(model.tensors[f"features.{wi}.{bits}.empty"]).view(1, -1, 1, 1)
                    if bits else empty[wi][None])
            f = torch.where(keep, f, fill)
        return f[0]

    def run_server(items, mode="att", batch=48):
        """items: list of (features [A] list, poses [A, 3] with the ego first). -> list of (boxes, scores)."""
        res = []
        with torch.no_grad():
            for k in range(0, len(items), batch):
                chunk = items[k:k + batch]
                fl, th, ow = [], [], []
                for n, (fs, poses) in enumerate(chunk):
                    for f, p in zip(fs, poses):
                        fl.append(model.server.zero_fill(f[None])[0])
                        th.append(theta_ego_from(poses[0], p))
                        ow.append(n)
                out = model.server(torch.stack(fl), torch.from_numpy(np.stack(th)).float(),
                                   torch.tensor(ow), len(chunk), mode)
                res += decode(out)
        return res

    def is_rsu(fi, e):
        return ds.frames[fi]["agents"][e].startswith("rsu")

    def score(dets):
        """AP over every ego-frame, over car egos only and over roadside-unit egos only."""
        accs = {"all": APAccum(), "car": APAccum(), "rsu": APAccum()}
        for (fi, e), (b, s) in zip(ego_items, dets):
            g, own = GT[(fi, e)]
            b, s = filt(b, s, own)
            part = APAccum()
            part.add(b, s, g)
            for k in ("all", "rsu" if is_rsu(fi, e) else "car"):
                accs[k].n_gt += part.n_gt
                for t in IOUS:
                    accs[k].s[t] += part.s[t]
                    accs[k].tp[t] += part.tp[t]
        return {k: a.result() for k, a in accs.items()}

    results = []

    def record(name, group, dets, bytes_=None, **kw):
        sc = score(dets)
        r = {"name": name, "group": group, "ap": sc["all"], "bytes": bytes_,
             "ap_car_egos": sc["car"], "ap_rsu_egos": sc["rsu"], **kw}
        results.append(r)
        print(f"{name:40s} AP@.3/.5/.7 = {r['ap'][0.3]:.1f} {r['ap'][0.5]:.1f} {r['ap'][0.7]:.1f}"
              f"  bytes={bytes_}  ({time.time() - t_start:.0f} s)", flush=True)

    full = nw - 1

    def intermediate(wi, bits, mode="att", sparse=None, noise=None, late_agent=False):
        items = []
        for fi, e in ego_items:
            fr = ds.frames[fi]
            na = len(fr["samples"])
            agents = [e] + [j for j in range(na) if j != e]
            poses = fr["pose"][agents].copy()
            fs = [feat_of(fi, j, wi, bits, sparse) for j in agents]
            if noise is not None and na > 1:
                poses[1:, :2] += rng.normal(0, noise[0], (na - 1, 2))
                poses[1:, 2] += np.deg2rad(rng.normal(0, noise[1], na - 1))
            if late_agent and na > 1:
                prev = ds.index.get((fr["rec"], fr["frame"] - 1))
                j = agents[1]
                fs[1] = feat_of(prev, j, wi, bits, sparse)
                poses[1] = ds.frames[prev]["pose"][j]
            items.append((fs, poses))
        return run_server(items, mode)

    def tx_bytes(wi, bits, sparse=None, n=150):
        """Mean bytes of one transmitted map (bit-packed + LZ4), over ``n`` test samples."""
        sizes = []
        idx = np.linspace(0, feats[wi].shape[0] - 1, n).astype(int)
        for k in idx:
            f = feats[wi][k][None]
            if bits is None:
                sizes.append(lz4_size(f.numpy().astype(np.float32).tobytes()))
                continue
            codes = model.quant.codes(f, wi, bits)[0].numpy()            # [C, 32, 32]
            if sparse is not None:
                keep = ((f - empty[wi][None]).norm(dim=1)[0] > sparse).numpy()
                payload = np.packbits(keep.ravel()).tobytes() + pack_bits(codes[:, keep], bits)
            else:
                payload = pack_bits(codes, bits)
            sizes.append(lz4_size(payload))
        return int(round(float(np.mean(sizes))))

    # sparsity threshold per width: a fraction of the typical deviation of a cell from the empty-cell feature
    sparse_thr = {}
    for wi in range(nw):
        dev = (feats[wi][::7] - empty[wi][None]).norm(dim=1).flatten()
        sparse_thr[wi] = float(0.25 * dev[dev > 1e-3].median())

    # --- single agent and late fusion
    single_items = [([feat_of(fi, e, full, None)], ds.frames[fi]["pose"][[e]]) for fi, e in ego_items]
    single = run_server(single_items)
    record("single agent (no cooperation)", "baseline", single, 0)
    own_dets = {}
    for (fi, e), d in zip(ego_items, single):
        own_dets[(fi, e)] = d
    late = []
    late_bytes = []
    for fi, e in ego_items:
        fr = ds.frames[fi]
        bs, ss = [], []
        for j in range(len(fr["samples"])):
            b, s = own_dets.get((fi, j), (np.zeros((0, 5)), np.zeros(0)))
            if j != e:
                late_bytes.append(len(b) * 20)  # x, y, l, w, yaw as float16 + score: ~20 bytes a box
                # j frame -> world -> e frame
                pj, pe = fr["pose"][j], fr["pose"][e]
                wxy = b[:, :2] @ rot(pj[2]).T + pj[:2]
                b = b.copy()
                b[:, :2] = (wxy - pe[:2]) @ rot(pe[2])
                b[:, 4] = wrap(b[:, 4] + pj[2] - pe[2])
            bs.append(b)
            ss.append(s)
        b, s = np.concatenate(bs), np.concatenate(ss)
        k = rotated_nms(b, s, 0.1)
        late.append((b[k], s[k]))
    record("late fusion (boxes, NMS)", "baseline", late, int(round(np.mean(late_bytes))) if late_bytes else 0)

    # --- early fusion: other agents' raw BEVs warped (nearest) into the ego grid, max over agents
    items = []
    with torch.no_grad():
        for fi, e in ego_items:
            fr = ds.frames[fi]
            agents = [e] + [j for j in range(len(fr["samples"])) if j != e]
            bev = ds.bev[fr["samples"][agents]].float()
            th = torch.from_numpy(np.stack([theta_ego_from(fr["pose"][e], fr["pose"][j]) for j in agents])).float()
            grid = F.affine_grid(th, list(bev.shape), align_corners=False)
            wb = F.grid_sample(bev, grid, mode="nearest", padding_mode="zeros", align_corners=False)
            fused = wb.amax(0, keepdim=True)
            f = encoder_forward(model.encoder, fused, full, False)[0]
            items.append(([f], fr["pose"][[e]]))
    early = run_server(items)
    raw = int(np.mean([lz4_size(ds.bev[k].numpy().tobytes()) for k in range(0, ds.bev.shape[0], 40)]))
    record("early fusion (raw BEV, max)", "baseline", early, raw)

    # --- intermediate fusion
    fb = tx_bytes(full, None)
    record("intermediate, float, attention", "float", intermediate(full, None, "att"), fb, width=1.0, bits=32)
    record("intermediate, float, max", "float", intermediate(full, None, "max"), fb, width=1.0, bits=32)
    configs = [(wi, b) for wi in range(nw) for b in BITS]
    if a.quick:
        configs = [(full, 8), (0, 4)]
    for wi, b in configs:
        w = model.arch["widths"][wi]
        record(f"intermediate, w={w}, {b} bit", "quant", intermediate(wi, b), tx_bytes(wi, b), width=w, bits=b)
        if not a.quick:
            record(f"intermediate, w={w}, {b} bit, sparse", "sparse", intermediate(wi, b, sparse=sparse_thr[wi]),
                   tx_bytes(wi, b, sparse_thr[wi]), width=w, bits=b)
    for pn in ((0.2, 0.2), (0.4, 0.4)):
        record(f"intermediate, float, pose noise {pn[0]} m / {pn[1]} deg", "robust",
               intermediate(full, None, noise=pn), fb)
    record("intermediate, float, one agent 100 ms late", "robust", intermediate(full, None, late_agent=True), fb)
    record("intermediate, w=1.0, 8 bit, one agent 100 ms late", "robust",
           intermediate(full, 8, late_agent=True), tx_bytes(full, 8))

    meta = {"frames": len(eval_frames), "ego_frames": len(ego_items), "gt_boxes": sum(len(GT[k][0]) for k in GT),
            "recordings": ds.recordings, "frame_stride": a.frame_stride, "sparse_thr": sparse_thr,
            "wall_s": time.time() - t_start}
    Path(a.json).write_text(json.dumps({"meta": meta, "results": [
        {**r, "ap": {str(k): v for k, v in r["ap"].items()}} for r in results]}, indent=1))
    write_md(results, meta, a.json, model)
    if a.write_table and not a.quick:
        write_table(a.model, results, sparse_thr, meta)
    plot(results, a.png)
    print(f"done in {time.time() - t_start:.0f} s")


def write_table(model_path: str, results, sparse_thr, meta) -> None:
    """Adds metadata 'rate_accuracy' to the model file: per configuration its width index, bits,
    sparsity threshold (0: every cell), mean bytes per map and AP@0.3/0.5/0.7 on the test scenes."""
    from safetensors import safe_open
    from slimsplit_train.st_write import save_file
    with safe_open(model_path, framework="numpy") as f:
        md = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    widths = json.loads(md["architecture"])["widths"]
    entries = []
    for r in results:
        if r["group"] not in ("quant", "sparse"):
            continue
        wi = widths.index(r["width"])
        entries.append({"width_index": wi, "bits": r["bits"],
                        "threshold": round(sparse_thr[wi], 4) if r["group"] == "sparse" else 0.0,
                        "bytes": r["bytes"], "ap30": round(r["ap"][0.3], 2), "ap50": round(r["ap"][0.5], 2),
                        "ap70": round(r["ap"][0.7], 2)})
    md["rate_accuracy"] = json.dumps({
        "doc": "intermediate fusion (all agents at this configuration) on the test scenes, training/evaluate.py; "
               "bytes: mean per transmitted map, bit-packed + LZ4; threshold: the sparsity threshold (0: every cell)",
        "ego_frames": meta["ego_frames"], "entries": entries}, separators=(",", ":"))
    save_file(tensors, model_path, metadata=md)
    print(f"wrote rate_accuracy ({len(entries)} entries) to {model_path}")


def write_md(results, meta, path, model):
    lines = ["| configuration | bytes / agent / frame | AP@0.3 | AP@0.5 | AP@0.7 | AP@0.5 car egos | AP@0.5 RSU egos |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        b = "—" if r["bytes"] is None else f"{r['bytes']:,}"
        lines.append(f"| {r['name']} | {b} | {r['ap'][0.3]:.1f} | {r['ap'][0.5]:.1f} | {r['ap'][0.7]:.1f} "
                     f"| {r['ap_car_egos'][0.5]:.1f} | {r['ap_rsu_egos'][0.5]:.1f} |")
    Path(path).with_suffix(".table").write_text("\n".join(lines) + "\n")
    Path(path).with_suffix(".meta.json").write_text(json.dumps(meta, indent=1))


def plot(results, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    markers = {8: "o", 4: "s", 2: "^"}
    for grp, ls in (("quant", "-"), ("sparse", "--")):
        for b in BITS:
            pts = sorted((r["bytes"], r["ap"][0.5], r["width"]) for r in results if r["group"] == grp and r["bits"] == b)
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, marker=markers[b],
                    label=f"{b} bit{' + sparsity' if grp == 'sparse' else ''} (w 0.25..1)")
            if grp == "quant":
                for p in pts:
                    ax.annotate(f"{p[2]}", (p[0], p[1]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    for r in results:
        if r["group"] == "float":
            ax.scatter([r["bytes"]], [r["ap"][0.5]], marker="*", s=120,
                       label=f"float32 ({r['name'].split(', ')[-1]})")
    for r in results:
        if r["group"] == "baseline":
            ax.axhline(r["ap"][0.5], ls=":", lw=1, color={"single agent (no cooperation)": "k"}.get(r["name"], None))
            ax.text(0.01, r["ap"][0.5] + 0.3, r["name"], fontsize=7, transform=ax.get_yaxis_transform())
    ax.set_xscale("log")
    ax.set_xlabel("bytes per agent per frame (bit-packed + LZ4)")
    ax.set_ylabel("BEV AP@0.5 (%)")
    ax.set_title("SlimSplit cooperative detection: rate vs accuracy (test scenes)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
