#!/usr/bin/env python3
"""Full-width encoder and the deep-fusion agent against ONNX Runtime, without PyTorch: the light form of peers.py.

Times in ONNX Runtime, one thread, on a BEV-like 1 x 8 x 128 x 128 input (~15 % of cells occupied; a
dense engine's time does not depend on it): the map model's committed ONNX encoders
(Models/slimsplit-bev-encoder-int8.onnx, the QLinearConv chain of exactly the file's int8 tensors,
and Models/slimsplit-bev-encoder.onnx, the BN-folded float graph), and the shipped deep-fusion
model's whole agent in int8 (Models/slimsplit-deep-agent-int8.onnx, training/export_deep_onnx.py:
encoder, backbone and own head's shared layer as QLinearConv, the head's 1x1 outputs and the message
compression in float). Then it runs `slimsplit-bench encoder --json --kernels all` on both model
files (simulator frames of the committed sample) in the same run, and prints one JSON document:
every path's full-width p50 and its ratio to the peers (below 1: SlimSplit is faster). Needs only
`onnxruntime` and `numpy` (small wheels):

    python3 -m venv /tmp/ort && /tmp/ort/bin/pip install onnxruntime numpy
    swift build -c release --product slimsplit-bench
    /tmp/ort/bin/python Benchmarks/peers_ort.py [--runs 300] [--bench .build/release/slimsplit-bench]

peers.py does every width and adds PyTorch, but needs the training environment (torch).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent


def ort_p50(path: Path, x: np.ndarray, runs: int) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    for _ in range(30):
        s.run(None, feed)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, feed)
        t.append((time.perf_counter() - t0) * 1e3)
    return round(sorted(t)[len(t) // 2], 4)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=300, help="timed runs per configuration (default %(default)s)")
    ap.add_argument("--bench", default=str(ROOT / ".build/release/slimsplit-bench"), help="slimsplit-bench binary")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    x = np.zeros((1, 8, 128, 128), np.float32)
    occupied = rng.random((128, 128)) < 0.15
    x[0, :, occupied] = rng.random((8, int(occupied.sum())), dtype=np.float32).T * 2
    print("timing ONNX Runtime ...", file=sys.stderr)
    peers = {
        "ort_int8": ort_p50(ROOT / "Models/slimsplit-bev-encoder-int8.onnx", x, args.runs),
        "ort_fp32": ort_p50(ROOT / "Models/slimsplit-bev-encoder.onnx", x, args.runs),
        "ort_deep_agent_int8": ort_p50(ROOT / "Models/slimsplit-deep-agent-int8.onnx", x, args.runs),
    }

    def bench(*extra: str) -> dict:
        out = subprocess.run(
            [args.bench, "encoder", "--json", "--kernels", "all", "--input", "sim", "--runs", str(args.runs), *extra],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout
        return json.loads(out[out.index("{"):])

    print("timing slimsplit-bench encoder --kernels all (both models) ...", file=sys.stderr)
    enc = bench()
    agent = {(r["kernels"], r["input"]): max(r["results"], key=lambda e: e["width"])["agent_int8"]["p50_ms"]
             for r in bench("--model", "Models/slimsplit-deep.safetensors", "--int8-only")["runs_by_kernel"]}
    paths = []
    for run in enc["runs_by_kernel"]:
        full = max(run["results"], key=lambda r: r["width"])
        i8, f32 = full["int8"]["p50_ms"], full["float"]["p50_ms"]
        a = agent[(run["kernels"], run["input"])]
        paths.append({"kernels": run["kernels"], "input": run["input"], "width": full["width"],
                      "int8_p50_ms": i8, "float_p50_ms": f32, "deep_agent_int8_p50_ms": a,
                      "int8_vs_ort_int8": round(i8 / peers["ort_int8"], 3),
                      "float_vs_ort_fp32": round(f32 / peers["ort_fp32"], 3),
                      "deep_agent_int8_vs_ort": round(a / peers["ort_deep_agent_int8"], 3)})
    bench = enc
    print(json.dumps({"benchmark": "encoder_vs_onnxruntime", "cpu": bench["cpu"], "runs": args.runs,
                      "onnxruntime": ort.__version__, "threads": 1, "peers_p50_ms": peers,
                      "kernels_supported": bench["kernels_supported"], "slimsplit": paths}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
