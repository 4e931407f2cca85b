#!/usr/bin/env python3
"""Issue 11's speed targets on this CPU, in one run: the full-width encoder against ONNX Runtime and
the end-to-end pipeline, each repeated, with the medians checked against the targets.

  * encoder (`Benchmarks/peers_ort.py`: the committed ONNX encoders in ONNX Runtime, one thread,
    then `slimsplit-bench encoder --kernels all` on the sample's simulator frames): int8 at most
    0.8x ONNX Runtime int8, float at most 1.0x ONNX Runtime fp32, each ratio within its own run;
    and, without a target, the shipped deep-fusion model's whole agent in int8 (encoder, backbone,
    own head, compression) against the same graph in ONNX Runtime;
  * end to end (`slimsplit-bench e2e`, 4 agents at 10 Hz, 10 s, agents and server on this machine):
    server capacity at least 400 agent-frames/s and capture-to-result p99 at most 50 ms, for the
    shipped deep-fusion model (its recommended message: codebook indices, tau 0.2) and the map
    model slimsplit-bev (4 bit); 16 agents once each; and,
    without a target, the fusion threads' CPU time as agent-frames per core-second (for sizing a
    server whose cores the agents do not share).

Every path this CPU runs is timed for the encoder; the end-to-end runs use the fastest path, or
each of --kernels. Needs a release build and onnxruntime + numpy (a small venv: see peers_ort.py):

    swift build -c release
    python3 Benchmarks/cpu_targets.py [--repeats 3] [--kernels avx2,avx512] [--out cpu-targets.json]

Prints a markdown table; --out writes every run's JSON as well. Timings on a shared VM move between
runs (docs/benchmarks.md): read the spread of the repeats, not one figure. On a machine with
AVX-512, `scripts/as-cpu avx2 python3 Benchmarks/cpu_targets.py ...` measures the AVX2-only targets
with both engines on their AVX2 kernels (needs CPUID faulting; the JSON records `cpuid_view`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / ".build/release/slimsplit-bench"
MODELS = [("slimsplit-deep (shipped)", ["--model", "Models/slimsplit-deep.safetensors"]),
          ("slimsplit-bev", ["--model", "Models/slimsplit-bev.safetensors", "--bits", "4"])]


def cpu() -> dict:
    """lscpu's model name and the flags that decide the kernel paths."""
    info = {"machine": platform.machine()}
    if os.environ.get("AS_CPU_VIEW"):  # scripts/as-cpu: CPUID shows less than lscpu's flags
        info["cpuid_view"] = os.environ["AS_CPU_VIEW"]
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "CPU family", "Model"):
            info[key.strip()] = value.strip()
        if key.strip() == "Flags":
            wanted = {"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "asimd", "asimddp"}
            info["flags"] = sorted(wanted & set(value.split()))
    return info


def run_json(cmd: list[str]) -> dict:
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return json.loads(out[out.index("{"):])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="encoder comparisons and 4-agent runs (default %(default)s)")
    ap.add_argument("--kernels", default="", help="comma-separated paths for the end-to-end runs (default: the fastest)")
    ap.add_argument("--out", type=Path, help="also write every run's JSON here")
    a = ap.parse_args()
    if not BENCH.exists():
        sys.exit(f"cpu_targets: {BENCH} not found: run `swift build -c release` first")
    doc: dict = {"benchmark": "cpu_targets", "cpu": cpu(), "encoder": [], "e2e": []}
    for k in range(a.repeats):
        print(f"encoder against ONNX Runtime, run {k + 1} of {a.repeats} ...", file=sys.stderr)
        doc["encoder"].append(run_json([sys.executable, str(ROOT / "Benchmarks/peers_ort.py"), "--bench", str(BENCH)]))
    paths = [p for p in a.kernels.split(",") if p] or [None]
    for path in paths:
        for name, args in MODELS:
            for agents, reps in ((4, a.repeats), (16, 1)):
                for k in range(reps):
                    print(f"e2e {name}, {agents} agents, {path or 'fastest path'}, run {k + 1} of {reps} ...",
                          file=sys.stderr)
                    cmd = [str(BENCH), "e2e", "--agents", str(agents), "--seconds", "10", "--json", *args]
                    r = run_json(cmd + (["--kernels", path] if path else []))
                    r["model_name"] = name
                    doc["e2e"].append(r)
    if a.out:
        a.out.write_text(json.dumps(doc, indent=1) + "\n")

    def med(v):
        return statistics.median(v) if v else float("nan")

    c = doc["cpu"]
    view = f"; seen through scripts/as-cpu {c['cpuid_view']}" if c.get("cpuid_view") else ""
    print(f"\n{c.get('Model name', '?')} ({c.get('CPU(s)', '?')} CPUs; {', '.join(c.get('flags', []))}{view})\n")
    print("| target | kernels | median (runs) | met |\n|---|---|---|---|")
    kernels = sorted({p["kernels"] for e in doc["encoder"] for p in e["slimsplit"]})
    for key, what, limit in (("int8_vs_ort_int8", "encoder int8 / ONNX Runtime int8", 0.8),
                             ("float_vs_ort_fp32", "encoder float / ONNX Runtime fp32", 1.0)):
        for kn in kernels:
            v = [p[key] for e in doc["encoder"] for p in e["slimsplit"] if p["kernels"] == kn]
            print(f"| {what} ≤ {limit} | {kn} | {med(v):.2f} ({', '.join(f'{x:.2f}' for x in v)}) | "
                  f"{'yes' if med(v) <= limit else 'no'} |")
    for kn in kernels:
        v = [p["deep_agent_int8_vs_ort"] for e in doc["encoder"] for p in e["slimsplit"] if p["kernels"] == kn]
        ms = [p["deep_agent_int8_p50_ms"] for e in doc["encoder"] for p in e["slimsplit"] if p["kernels"] == kn]
        print(f"| deep-fusion agent int8 / ONNX Runtime int8 (no target; dense) | {kn} | {med(v):.2f} "
              f"({', '.join(f'{x:.2f}' for x in v)}; {med(ms):.2f} ms) | — |")
    for r_kernels in sorted({r["kernels"] for r in doc["e2e"]}):
        for name, _ in MODELS:
            runs = [r for r in doc["e2e"] if r["kernels"] == r_kernels and r["model_name"] == name and r["agents"] == 4]
            cap = [r["capacity_agent_frames_per_s"] for r in runs]
            p99 = [r["capture_to_result_ms"]["p99"] for r in runs]
            print(f"| {name}, 4 agents: capacity ≥ 400 agent-frames/s | {r_kernels} | {med(cap):.0f} "
                  f"({', '.join(f'{x:.0f}' for x in cap)}) | {'yes' if med(cap) >= 400 else 'no'} |")
            print(f"| {name}, 4 agents: capture-to-result p99 ≤ 50 ms | {r_kernels} | {med(p99):.1f} "
                  f"({', '.join(f'{x:.1f}' for x in p99)}) | {'yes' if med(p99) <= 50 else 'no'} |")
            core = [r["agent_frames_per_core_second"] for r in runs if "agent_frames_per_core_second" in r]
            if core:
                print(f"| {name}, 4 agents: agent-frames per core-second of fusion CPU (no target) | "
                      f"{r_kernels} | {med(core):.0f} ({', '.join(f'{x:.0f}' for x in core)}) | — |")
            for r in (r for r in doc["e2e"] if r["kernels"] == r_kernels and r["model_name"] == name
                      and r["agents"] == 16):
                print(f"| {name}, 16 agents: capacity / p99 (no target) | {r_kernels} | "
                      f"{r['capacity_agent_frames_per_s']:.0f} / {r['capture_to_result_ms']['p99']:.1f} ms | — |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
