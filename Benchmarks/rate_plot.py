#!/usr/bin/env python3
"""Rate against accuracy, live: AP@0.5 over bytes per agent-frame on the wire (after packing and
LZ4, headers included), one point per method, for the clean and the V2XSet "noisy" condition,
from one or more Benchmarks/conditions.py results (each file a series, labelled by its model).

  Benchmarks/rate_plot.py docs/bench/conditions-deep-epyc-zen4.json docs/bench/conditions-xeon-2core.json \
      --out docs/rate_accuracy_live.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CONDS = [("clean", "clean poses"), ("noisy (0.2 m / 0.2 deg + 100 ms)", "0.2 m / 0.2° noise + 100 ms late")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/rate_accuracy_live.png"))
    a = ap.parse_args()
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    markers = "osD^v<>"
    for ax, (cond, title) in zip(axes, CONDS):
        for fi, path in enumerate(a.results):
            doc = json.loads(path.read_text())
            model = "slimsplit-deep" if doc.get("deep") else "slimsplit-bev"
            runs = [r for r in doc["runs"] if r["condition"] == cond]
            for k, r in enumerate(runs):
                late = r["method"].startswith("late")
                ax.scatter(r["bytes_per_agent_frame"], r["ap"]["0.5"], marker="*" if late else markers[fi],
                           s=140 if late else 60, zorder=3,
                           label=f"{model}: {r['method']} ({r['bytes_per_agent_frame']:,} B)")
            ax.axhline(doc["single_agent_ap"]["0.5"], ls=":", lw=1, color="k" if fi == 0 else "grey",
                       label=f"{model}: single agent ({doc['single_agent_ap']['0.5']:.1f})")
        ax.axvline(1398, ls="--", lw=1, color="grey")
        ax.text(1398, ax.get_ylim()[0] + 1, " 1,398 B", color="grey", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("bytes per agent-frame on the wire (log)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("BEV AP@0.5 (%)")
    axes[1].legend(fontsize=6.5, loc="lower right")
    fig.suptitle("Live rate against accuracy, held-out test recordings (slimsplit eval)")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
