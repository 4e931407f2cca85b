#!/usr/bin/env python3
"""Table, JSON and plot of a Benchmarks/shaped_link.sh run.

    python3 Benchmarks/shaped_link_report.py --dir /tmp/slimsplit-shaped [--png out.png] [--json out.json]

Reads DIR/trace.json (the bandwidth segments, wall-clock start) and the shaped agents' per-frame
reports DIR/adaptive.jsonl and DIR/fixed.jsonl (`slimsplit agent --report`). Per trace segment and
over the whole trace, for each agent: the configuration it sent most (width index / bits),
bytes per frame, its goodput estimate, latency p50 / p95, deadline misses, and AP@0.5 of the
detections it got back in time (a missed frame counts as no detections). AP pools the frames'
scores and true-positive flags, as training/evaluate.py does.
"""
from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np

AGENTS = ("adaptive", "fixed")


def ap(frames: list[dict], key: str = "tp50") -> float:
    n_gt = sum(f["n_gt"] for f in frames)
    if n_gt == 0:
        return float("nan")
    scores = np.array([s for f in frames for s in f["scores"]], dtype=float)
    tp = np.array([t for f in frames for t in f[key]], dtype=float)
    order = np.argsort(-scores, kind="stable")
    tp = tp[order]
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    rec = np.concatenate([[0], ctp / n_gt, [1]])
    prec = np.concatenate([[0], ctp / np.maximum(ctp + cfp, 1e-9), [0]])
    for i in range(len(prec) - 2, -1, -1):
        prec[i] = max(prec[i], prec[i + 1])
    idx = np.nonzero(rec[1:] != rec[:-1])[0]
    return float(100 * np.sum((rec[idx + 1] - rec[idx]) * prec[idx + 1]))


def config_label(f: dict) -> str:
    """w<width index>/<bits>b[/s sparse], or "boxes" for the boxes rung (the agent's own detections)."""
    if f.get("payload") == "boxes":
        return "boxes"
    return f"w{f['width_index']}/{f['bits']}b{'/s' if f['threshold'] > 0 else ''}"


def summarize(frames: list[dict]) -> dict:
    if not frames:
        return {"frames": 0}
    lat = np.array([f["latency_ms"] for f in frames if f["latency_ms"] is not None])
    good = [f["goodput_kbit_s"] for f in frames if f["goodput_kbit_s"] is not None]
    cfg = collections.Counter(config_label(f) for f in frames)
    return {
        "frames": len(frames),
        "config": cfg.most_common(1)[0][0],
        "configs": dict(cfg),
        "bytes_per_frame": round(float(np.mean([f["bytes"] for f in frames]))),
        "goodput_kbit_s": round(float(np.mean(good))) if good else None,
        "latency_p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "latency_p95_ms": round(float(np.percentile(lat, 95)), 1) if len(lat) else None,
        "missed": sum(f["missed"] for f in frames),
        "missed_pct": round(100 * sum(f["missed"] for f in frames) / len(frames), 1),
        "ap30": round(ap(frames, "tp30"), 1), "ap50": round(ap(frames, "tp50"), 1), "ap70": round(ap(frames, "tp70"), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="/tmp/slimsplit-shaped")
    p.add_argument("--png", default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    d = Path(a.dir)
    trace = json.loads((d / "trace.json").read_text())
    t_start = trace[0]["start"]
    t_end = trace[-1]["start"] + trace[-1]["seconds"]
    runs = {}
    for name in AGENTS:
        rows = [json.loads(l) for l in (d / f"{name}.jsonl").read_text().splitlines() if l.strip()]
        runs[name] = sorted((r for r in rows if t_start <= r["wall_s"] < t_end), key=lambda r: r["wall_s"])

    segments = []
    for k, seg in enumerate(trace):
        lo, hi = seg["start"], seg["start"] + seg["seconds"]
        row = {"segment": k, "mbit": seg["mbit"], "seconds": seg["seconds"]}
        for name in AGENTS:
            row[name] = summarize([r for r in runs[name] if lo <= r["wall_s"] < hi])
        segments.append(row)
    overall = {name: summarize(runs[name]) for name in AGENTS}

    hdr = ("| segment | link | agent | config (most) | bytes/frame | goodput est. kbit/s | latency p50 / p95 ms "
           "| deadline misses | AP@0.5 |")
    print(hdr)
    print("|---|---|---|---|---:|---:|---:|---:|---:|")

    def line(seg, link, name, s):
        if not s.get("frames"):
            return f"| {seg} | {link} | {name} | — | | | | | |"
        return (f"| {seg} | {link} | {name} | {s['config']} | {s['bytes_per_frame']:,} | {s['goodput_kbit_s']} "
                f"| {s['latency_p50_ms']} / {s['latency_p95_ms']} | {s['missed']}/{s['frames']} ({s['missed_pct']} %) "
                f"| {s['ap50']} |")
    for row in segments:
        for name in AGENTS:
            print(line(row["segment"], f"{row['mbit']} Mbit/s, {row['seconds']} s", name, row[name]))
    for name in AGENTS:
        print(line("all", "trace", name, overall[name]))

    result = {"trace": trace, "segments": segments, "overall": overall}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    if a.png:
        plot(trace, runs, segments, a.png)
        print(f"plot: {a.png}")


def plot(trace, runs, segments, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t0 = trace[0]["start"]
    fig, ax = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    colors = {"adaptive": "tab:blue", "fixed": "tab:red"}
    # 1: link rate and goodput estimates
    ts, ys = [], []
    for s in trace:
        ts += [s["start"] - t0, s["start"] - t0 + s["seconds"]]
        ys += [s["mbit"], s["mbit"]]
    ax[0].plot(ts, ys, "k-", lw=2, label="link rate (tbf)")
    for name, rows in runs.items():
        g = [(r["wall_s"] - t0, r["goodput_kbit_s"] / 1000) for r in rows if r["goodput_kbit_s"] is not None]
        if g:
            ax[0].plot(*zip(*g), ".", ms=3, color=colors[name], label=f"{name}: goodput estimate")
    ax[0].set_ylabel("Mbit/s")
    ax[0].set_yscale("log")
    ax[0].legend(fontsize=7, loc="lower left")
    # 2: bytes per frame (the chosen configuration)
    for name, rows in runs.items():
        ax[1].plot([r["wall_s"] - t0 for r in rows], [r["bytes"] / 1000 for r in rows], ".", ms=3, color=colors[name], label=name)
    prev, last_t = None, -1e9
    for r in runs["adaptive"]:
        cfg = config_label(r)
        if cfg != prev and r["wall_s"] - last_t > 3:  # label changes, at most one every 3 s
            ax[1].annotate(cfg, (r["wall_s"] - t0, r["bytes"] / 1000), fontsize=7, xytext=(2, 6), textcoords="offset points")
            prev, last_t = cfg, r["wall_s"]
    ax[1].set_ylabel("kB per frame")
    ax[1].set_yscale("log")
    ax[1].legend(fontsize=7)
    # 3: latency (capture -> detections back), missed frames at the top
    for name, rows in runs.items():
        pts = [(r["wall_s"] - t0, r["latency_ms"] if r["latency_ms"] is not None else 2000) for r in rows]
        ax[2].plot(*zip(*pts), ".", ms=3, color=colors[name], label=name)
    ax[2].axhline(100, ls="--", color="k", lw=1, label="deadline 100 ms")
    ax[2].set_ylabel("latency ms")
    ax[2].text(0.01, 0.94, "points at 2000: no result in time", transform=ax[2].transAxes, fontsize=7, va="top")
    ax[2].set_yscale("log")
    ax[2].legend(fontsize=7)
    # 4: AP@0.5 per segment
    for name in AGENTS:
        xs, ys = [], []
        for seg, s in zip(trace, segments):
            v = s[name].get("ap50")
            xs += [seg["start"] - t0, seg["start"] - t0 + seg["seconds"]]
            ys += [v, v]
        ax[3].plot(xs, ys, "-", color=colors[name], lw=2, label=name)
    ax[3].set_ylabel("AP@0.5 per segment (%)")
    ax[3].set_xlabel("seconds")
    ax[3].legend(fontsize=7)
    for a_ in ax:
        a_.grid(True, alpha=0.3)
        for s in trace[1:]:
            a_.axvline(s["start"] - t0, color="gray", lw=0.5)
    fig.suptitle("SlimSplit: adaptive vs fixed full-width agent on the same shaped link")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
