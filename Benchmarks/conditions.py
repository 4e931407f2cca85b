#!/usr/bin/env python3
"""Late fusion against intermediate fusion, live, under the cooperative-perception conditions.

Runs `slimsplit eval` (agents and the fusion server on real sockets, Curve on, lock-step) over the
held-out test recordings, pooled, for each method under each condition:
  methods     late fusion (every agent sends its own boxes: the Boxes message), intermediate at
              full width 8 bit, intermediate at the cheapest map (w=0.25, 2 bit, sparse); the
              single agent (no cooperation) is the clean run's "alone";
  conditions  clean; pose noise 0.2 m / 0.2 deg and 0.4 m / 0.4 deg on the other agents; the other
              agents 100 ms late; the V2XSet "noisy" setting (0.2 m / 0.2 deg and 100 ms).
With --deep, the methods are the deep-fusion model's (Models/slimsplit-deep.safetensors): late fusion of
its agents' own detections (the fair baseline: the same single-agent detector), merged as the model
file says (weighted means) and by NMS alone (the literature's late fusion), and its messages at
8 bit every cell, 4 bit tau 0.1, 2 bit tau 0.2, and codebook indices (3 x 7 bits a cell) at tau 0.2.
The server moves what a late agent sent to the ego's time by the speeds it tracks (motion
compensation, on by default in `slimsplit server` and `eval`, for every method that carries boxes);
--no-motion-compensation runs every method without it; --pose-alignment runs every method with the
server correcting other agents' positions from the objects both detect (`fusion.pose_alignment`).
Writes the JSON of every run, a markdown table and a plot (AP@0.5 per condition and method).

  Benchmarks/conditions.py [--bin .build/release/slimsplit] [--recordings DIR] [--out DIR] [--deep]
                           [--no-motion-compensation] [--pose-alignment]

--recordings DIR holds the test recordings; missing ones are recorded first with `slimsplit
record` from training/scenes (the test split of training/gen_data.py, deterministic seeds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))
from gen_data import SPLITS  # noqa: E402  (the test split: scenes and seeds)

METHODS = [
    ("late fusion (boxes)", ["--late-fusion"]),
    ("intermediate, w=1.0, 8 bit", ["--width-index", "3", "--bits", "8"]),
    ("intermediate, w=0.25, 2 bit, sparse", ["--width-index", "0", "--bits", "2", "--threshold", "1.5228"]),
]
DEEP = "Models/slimsplit-deep.safetensors"
DEEP_METHODS = [
    ("late fusion (own boxes, weighted merge)", ["--model", DEEP, "--method", "late"]),
    ("late fusion (own boxes, NMS)", ["--model", DEEP, "--method", "late", "--merge", "nms"]),
    ("deep, 8 bit, every cell", ["--model", DEEP, "--bits", "8"]),
    ("deep, 4 bit, tau 0.1", ["--model", DEEP, "--bits", "4", "--threshold", "0.1"]),
    ("deep, 2 bit, tau 0.2", ["--model", DEEP, "--bits", "2", "--threshold", "0.2"]),
    ("deep, codebook 3 x 128, tau 0.2", ["--model", DEEP, "--payload", "codebook", "--threshold", "0.2"]),
]
CONDITIONS = [
    ("clean", []),
    ("pose noise 0.2 m / 0.2 deg", ["--pose-noise", "0.2,0.2"]),
    ("pose noise 0.4 m / 0.4 deg", ["--pose-noise", "0.4,0.4"]),
    ("100 ms late", ["--latency-ms", "100"]),
    ("noisy (0.2 m / 0.2 deg + 100 ms)", ["--pose-noise", "0.2,0.2", "--latency-ms", "100"]),
]
SHORT = ["clean", "noise\n0.2 m / 0.2°", "noise\n0.4 m / 0.4°", "100 ms\nlate", "noisy\n0.2 / 0.2° + 100 ms"]


def recordings(binary: str, directory: Path) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for scene, seeds in SPLITS["test"]:
        for s in seeds:
            path = directory / f"{scene}-s{s}.mcap"
            if not path.exists():
                subprocess.run([binary, "record", "--scene", str(ROOT / "training/scenes" / f"{scene}.yaml"),
                                "--seed", str(s), "--out", str(path)], check=True, stdout=subprocess.DEVNULL)
            out.append(str(path))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=str(ROOT / ".build/release/slimsplit"))
    ap.add_argument("--recordings", type=Path, default=Path("/tmp/slimsplit-test-recordings"))
    ap.add_argument("--out", type=Path, default=Path("/tmp/slimsplit-conditions"))
    ap.add_argument("--from-json", type=Path, help="only redo the table and plot of an earlier run's conditions.json")
    ap.add_argument("--deep", action="store_true", help="the deep-fusion model's methods")
    ap.add_argument("--no-motion-compensation", action="store_true",
                    help="the server fuses late messages where their objects were (slimsplit eval --no-motion-compensation)")
    ap.add_argument("--pose-alignment", action="store_true",
                    help="the server corrects other agents' positions from shared objects (slimsplit eval --pose-alignment)")
    ap.add_argument("--reuse", type=Path, help="an earlier run's conditions.json: its runs of the same method, "
                                                "condition and arguments are taken instead of rerun")
    a = ap.parse_args()
    if a.deep or (a.from_json and json.loads(a.from_json.read_text()).get("deep")):
        METHODS[:] = DEEP_METHODS
    if a.from_json:
        doc = json.loads(a.from_json.read_text())
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "conditions.md").write_text(table(doc["runs"], doc["single_agent_ap"]))
        plot(doc["runs"], doc["single_agent_ap"], a.out / "conditions.png")
        print(table(doc["runs"], doc["single_agent_ap"]))
        return
    recs = recordings(a.bin, a.recordings)
    a.out.mkdir(parents=True, exist_ok=True)
    runs = []
    t0 = time.time()
    earlier = {(r["method"], r["condition"]): r for r in json.loads(a.reuse.read_text())["runs"]} if a.reuse else {}
    for mi, (method, margs) in enumerate(METHODS):
        for ci, (cond, cargs) in enumerate(CONDITIONS):
            old = earlier.get((method, cond))
            if old is not None and old["args"] == margs + cargs and old.get("motion_compensation") == (not a.no_motion_compensation) \
                    and old.get("pose_alignment", False) == a.pose_alignment:
                runs.append(old)
                continue
            cmd = [a.bin, "eval", "--json", *margs, *cargs] + (["--no-motion-compensation"] if a.no_motion_compensation else []) \
                + (["--pose-alignment"] if a.pose_alignment else [])
            for r in recs:
                cmd += ["--recording", r]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if p.returncode != 0:
                sys.exit(f"{' '.join(cmd[:8])} ... failed:\n{p.stderr[-2000:]}")
            doc = json.loads(p.stdout)
            frames = sum(x["frames"] for x in doc["agents"])
            bytes_ = sum(x["bytes_per_frame"] * x["frames"] for x in doc["agents"]) / max(frames, 1)
            runs.append({"method": method, "condition": cond, "args": margs + cargs, "bytes_per_agent_frame": round(bytes_),
                         "ap": doc["fused_ap"], "alone_ap": doc["alone_ap"],
                         "ap_by_agents_seeing": doc["fused_ap_by_agents_seeing"], "ap_by_range_m": doc["fused_ap_by_range_m"],
                         "agent_frames": frames, "rejected": doc["rejected_messages"],
                         "motion_compensation": doc["conditions"]["motion_compensation"],
                         "pose_alignment": doc["conditions"].get("pose_alignment", False)})
            r = runs[-1]
            print(f"{method:38s} {cond:34s} {r['bytes_per_agent_frame']:>7,} B  AP@.3/.5/.7 "
                  f"{r['ap']['0.3']:.1f} {r['ap']['0.5']:.1f} {r['ap']['0.7']:.1f}  ({time.time() - t0:.0f} s)", flush=True)
    # the single agent: the clean run of the first map method (its agents' own heads, alone)
    single = next(r["alone_ap"] for r in runs if not r["method"].startswith("late") and r["condition"] == "clean")
    doc = {"recordings": recs, "runs": runs, "single_agent_ap": single, "wall_s": round(time.time() - t0),
           "deep": a.deep, "motion_compensation": not a.no_motion_compensation, "pose_alignment": a.pose_alignment}
    (a.out / "conditions.json").write_text(json.dumps(doc, indent=1))
    (a.out / "conditions.md").write_text(table(runs, single))
    plotted = plot(runs, single, a.out / "conditions.png")
    print(table(runs, single))
    print(f"wrote {a.out}/conditions.json, conditions.md" + (", conditions.png" if plotted else " (no plot)"))


def table(runs, single) -> str:
    heads = ["method", "bytes / agent-frame"] + [f"{c} AP@0.5 / 0.7" for c, _ in CONDITIONS]
    lines = ["| " + " | ".join(heads) + " |", "|---|" + "---:|" * (len(heads) - 1)]
    lines.append(f"| single agent (no cooperation) | 0 | {single['0.5']:.1f} / {single['0.7']:.1f} |"
                 + " same |" * (len(CONDITIONS) - 1))
    for method, _ in METHODS:
        rs = {r["condition"]: r for r in runs if r["method"] == method}
        cells = [f"{rs[c]['ap']['0.5']:.1f} / {rs[c]['ap']['0.7']:.1f}" for c, _ in CONDITIONS]
        lines.append(f"| {method} | {rs['clean']['bytes_per_agent_frame']:,} | " + " | ".join(cells) + " |")
    lines += ["", "| method (clean) | AP@0.3 | AP@0.5, seen by 1 agent | seen by 2+ | AP@0.5 at 0–15 m | 15–30 m | 30+ m |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for method, _ in METHODS:
        r = next(r for r in runs if r["method"] == method and r["condition"] == "clean")
        s, g = r["ap_by_agents_seeing"], r["ap_by_range_m"]
        lines.append(f"| {method} | {r['ap']['0.3']:.1f} | {s['1']['0.5']:.1f} | {s['2+']['0.5']:.1f} | "
                     f"{g['0-15']['0.5']:.1f} | {g['15-30']['0.5']:.1f} | {g['30+']['0.5']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(runs, single, path: Path) -> bool:
    """Writes the plot to ``path``; False (and says why) where matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install -r Benchmarks/requirements.txt)")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    for ax, key in zip(axes, ("0.5", "0.7")):
        width = 0.8 / len(METHODS)
        for mi, (method, _) in enumerate(METHODS):
            ys = [next(r for r in runs if r["method"] == method and r["condition"] == c)["ap"][key] for c, _ in CONDITIONS]
            xs = [ci + (mi - (len(METHODS) - 1) / 2) * width for ci in range(len(CONDITIONS))]
            b = next(r for r in runs if r["method"] == method)["bytes_per_agent_frame"]
            ax.bar(xs, ys, width, label=f"{method} ({b:,} B)")
        ax.axhline(single[key], ls=":", color="k", lw=1, label="single agent")
        ax.set_xticks(range(len(CONDITIONS)), SHORT, fontsize=8)
        ax.set_ylabel(f"BEV AP@{key} (%)")
        ax.grid(True, axis="y", alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    kind = "deep" if METHODS == DEEP_METHODS else "intermediate"
    fig.suptitle(f"Live late vs {kind} fusion on the held-out test recordings (slimsplit eval)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


if __name__ == "__main__":
    main()
