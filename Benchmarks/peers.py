#!/usr/bin/env python3
"""Encoder latency: SlimSplit against PyTorch and ONNX Runtime, one thread each, every width.

Loads a SlimSplit model file (default: the shipped model, Models/slimsplit-bev.safetensors; the
reference encoder is Tests/Fixtures/engine/ref_encoder.safetensors) and, per width, builds and
times:

    torch_fp32  PyTorch eval, BN folded into the convolutions (torch.set_num_threads(1))
    ort_fp32    ONNX Runtime, the same BN-folded float graph (Conv + Relu)
    ort_int8    ONNX Runtime, QuantizeLinear -> QLinearConv chain -> DequantizeLinear built from
                exactly the file's int8 tensors (float in, float out)

ONNX Runtime: CPU EP, intra_op_num_threads=1, inter_op_num_threads=1, sequential, default graph
optimization. Input: 1 x C x H x W (default 128 x 128) BEV-like, ~15% of cells occupied; the peers
are dense engines, so their time does not depend on the input's content.
Then runs `slimsplit-bench encoder --json --kernels all` on every kernel path this CPU runs, on
simulator BEV frames (`sim`) and the random input (`random`), and once more with `--dense` (every
cell computed), and prints one JSON document on stdout (progress goes to stderr). Ratios are
SlimSplit p50 / peer p50: below 1 means SlimSplit is faster.

    /work/venv-train/bin/python Benchmarks/peers.py [--model M] [--slimsplit BIN] [--runs 300]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "training"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from slimsplit_train.arch import layer_channels  # noqa: E402
from slimsplit_train.data import bev_input  # noqa: E402
from slimsplit_train.model_io import FORMAT, net_from_tensors  # noqa: E402
from safetensors import safe_open  # noqa: E402
from slimsplit_train.onnx_build import float_model, int8_chain_model, ort_session  # noqa: E402
from slimsplit_train.quantize import fold_bn  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cpu_info() -> dict:
    info: dict = {"machine": platform.machine(), "system": platform.system(), "logical_cpus": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        fields = {}
        for line in text.splitlines():
            if ":" in line:
                k, v = (s.strip() for s in line.split(":", 1))
                fields.setdefault(k, v)
        info["model"] = fields.get("model name") or fields.get("Model") or fields.get("Hardware") or "unknown"
        flags = set((fields.get("flags") or fields.get("Features") or "").split())
        wanted = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp", "i8mm")
        info["isa"] = [f for f in wanted if f in flags]
    except OSError:
        try:
            info["model"] = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                           text=True, timeout=5).stdout.strip() or platform.processor()
        except (OSError, subprocess.SubprocessError):
            info["model"] = platform.processor() or "unknown"
    return info


def timed(fn, runs: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    t = np.empty(runs, dtype=np.float64)
    for k in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        t[k] = (time.perf_counter_ns() - t0) / 1e6
    return {"p50_ms": round(float(np.percentile(t, 50)), 4), "p99_ms": round(float(np.percentile(t, 99)), 4),
            "mean_ms": round(float(t.mean()), 4), "min_ms": round(float(t.min()), 4), "runs": runs}


def torch_folded(net, arch, i: int) -> nn.Module:
    mods = []
    for spec in arch["layers"]:
        w, b = fold_bn(net, spec["name"], i)
        _, _, g = layer_channels(arch, spec, i)
        conv = nn.Conv2d(w.shape[1] * g, w.shape[0], tuple(w.shape[2:]), spec["stride"], spec["padding"],
                         spec["dilation"], g, bias=True)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(w))
            conv.bias.copy_(torch.from_numpy(b))
        mods.append(conv)
        if spec.get("activation") == "relu":
            mods.append(nn.ReLU())
        elif spec.get("activation") == "relu6":
            mods.append(nn.ReLU6())
    if any(s["input"] != p for s, p in zip(arch["layers"], [arch["input"]["name"]] + [s["name"] for s in arch["layers"]])):
        raise NotImplementedError("peers.py times sequential architectures only")
    return nn.Sequential(*mods).eval()


def load_encoder(path: Path):
    """The edge encoder of a model file (a cooperative model's server.* and features.* tensors are
    not the encoder's and are left out)."""
    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise SystemExit(f"{path}: not a {FORMAT} file")
        arch = json.loads(meta["architecture"])
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith(("server.", "features."))}
    arch = {k: v for k, v in arch.items() if k != "server"}
    return net_from_tensors(arch, tensors), arch, tensors


def extract_json(text: str):
    """The last JSON object in ``text`` (tolerates log lines around it)."""
    dec = json.JSONDecoder()
    found = None
    pos = text.find("{")
    while pos != -1:
        try:
            obj, end = dec.raw_decode(text, pos)
            if isinstance(obj, dict):
                found = obj
            pos = text.find("{", end)
        except json.JSONDecodeError:
            pos = text.find("{", pos + 1)
    return found


def run_slimsplit(binary: Path, model: Path, timeout: int, extra: list[str]) -> dict:
    if not binary.exists():
        msg = (f"slimsplit binary not found at {binary}; build it with `swift build -c release --product slimsplit-bench` "
               f"(or pass --slimsplit PATH). Peers are still reported.")
        log("NOTE: " + msg)
        return {"status": "missing", "binary": str(binary), "message": msg, "results": []}
    cmd = [str(binary), "encoder", "--json", "--model", str(model), "--kernels", "all", *extra]
    log("running: " + " ".join(cmd))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "binary": str(binary), "command": cmd, "message": f"no result in {timeout} s",
                "results": []}
    doc = extract_json(p.stdout)
    if p.returncode != 0 or doc is None or not isinstance(doc.get("runs_by_kernel"), list):
        msg = f"exit status {p.returncode}; stderr: {p.stderr.strip()[-2000:]}; stdout: {p.stdout.strip()[-1000:]}"
        log("WARNING: slimsplit-bench encoder failed: " + msg)
        return {"status": "failed", "binary": str(binary), "command": cmd, "message": msg, "results": []}
    return {"status": "ok", "binary": str(binary), "command": cmd, "runs": doc["runs_by_kernel"],
            "raw": {k: v for k, v in doc.items() if k != "runs_by_kernel"}}


def p50(d):
    return d.get("p50_ms") if isinstance(d, dict) else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "Models" / "slimsplit-bev.safetensors")
    ap.add_argument("--slimsplit", type=Path, default=ROOT / ".build" / "release" / "slimsplit-bench")
    ap.add_argument("--runs", type=int, default=300, help="timed runs per measurement (>= 200 recommended)")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--occupancy", type=float, default=0.15)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--no-slimsplit", action="store_true", help="time the peers only")
    ap.add_argument("--slimsplit-timeout", type=int, default=900)
    ap.add_argument("--out", type=Path, help="also write the JSON document here")
    args = ap.parse_args()

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    import onnxruntime as ort

    net, arch, tensors = load_encoder(args.model)
    h, w = args.height, args.width
    c = arch["input"]["channels"]
    x = bev_input(args.seed, h, w, channels=c, occupancy=args.occupancy)
    x_np = x.numpy()
    has_int8 = any(".int8." in k for k in tensors)
    cpu = cpu_info()
    log(f"CPU: {cpu.get('model')} ({', '.join(cpu.get('isa', []))}); model {args.model}; input 1x{c}x{h}x{w}, "
        f"occupancy {float((x.abs().sum(1) > 0).float().mean()):.3f}; {args.runs} runs after {args.warmup} warm-up")

    rows = []
    for i, wdt in enumerate(arch["widths"]):
        row: dict = {"width": wdt, "width_index": i}
        tmod = torch_folded(net, arch, i)
        folded = {s["name"]: fold_bn(net, s["name"], i) for s in arch["layers"]}
        s_f = ort_session(float_model(arch, folded, i, h, w), threads=1)
        with torch.inference_mode():
            y_t = tmod(x).numpy()
            y_ref = net(x, i).numpy()

            def run_torch():
                tmod(x)

            row["torch_fp32"] = timed(run_torch, args.runs, args.warmup)
        y_o = s_f.run(None, {arch["input"]["name"]: x_np})[0]
        row["ort_fp32"] = timed(lambda: s_f.run(None, {arch["input"]["name"]: x_np}), args.runs, args.warmup)
        check = {"torch_folded_vs_slimnet_max_abs": float(np.abs(y_t - y_ref).max()),
                 "ort_fp32_vs_torch_max_abs": float(np.abs(y_o - y_t).max())}
        if has_int8:
            s_q = ort_session(int8_chain_model(arch, tensors, i, h, w, float_io=True), threads=1)
            y_q = s_q.run(None, {arch["input"]["name"]: x_np})[0]
            row["ort_int8"] = timed(lambda: s_q.run(None, {arch["input"]["name"]: x_np}), args.runs, args.warmup)
            check["ort_int8_vs_torch_rel_l2"] = float(np.linalg.norm(y_q - y_t) / max(np.linalg.norm(y_t), 1e-12))
        else:
            row["ort_int8"] = None
        row["check"] = {k: round(v, 6) for k, v in check.items()}
        log(f"width {wdt}: torch_fp32 p50 {p50(row['torch_fp32'])} ms, ort_fp32 p50 {p50(row['ort_fp32'])} ms, "
            f"ort_int8 p50 {p50(row['ort_int8'])} ms")
        rows.append(row)

    slim_runs = []
    if not args.no_slimsplit:
        for extra in (["--input", "both"], ["--input", "random", "--dense"]):
            got = run_slimsplit(args.slimsplit, args.model.resolve(), args.slimsplit_timeout, extra + ["--runs", str(args.runs)])
            if got["status"] != "ok":
                slim_runs.append({"status": got["status"], "message": got.get("message")})
                continue
            for run in got["runs"]:
                run["dense"] = "--dense" in extra
                slim_runs.append(run)
            slim = got
    else:
        slim = {"status": "skipped"}

    # Ratios: SlimSplit p50 / peer p50, per kernel path, input and width.
    ratios = []
    for run in slim_runs:
        if "results" not in run:
            continue
        for r in run["results"]:
            row = next((x for x in rows if x["width_index"] == r.get("width_index")), None)
            if row is None:
                continue
            peers = {k: p50(row[k]) for k in ("torch_fp32", "ort_fp32", "ort_int8") if p50(row.get(k))}
            fastest = min(peers, key=peers.get) if peers else None
            s_i, s_f = p50(r.get("int8")), p50(r.get("float"))
            ratios.append({
                "kernels": run["kernels"], "input": run["input"] + (" dense" if run["dense"] else ""),
                "occupancy": run.get("occupancy"), "width": r["width"],
                "slimsplit_int8_p50_ms": s_i, "slimsplit_float_p50_ms": s_f, "fastest_peer": fastest,
                "int8_vs_ort_int8": round(s_i / peers["ort_int8"], 3) if s_i and "ort_int8" in peers else None,
                "int8_vs_fastest_peer": round(s_i / peers[fastest], 3) if s_i and fastest else None,
                "float_vs_ort_fp32": round(s_f / peers["ort_fp32"], 3) if s_f and "ort_fp32" in peers else None,
                "float_vs_torch_fp32": round(s_f / peers["torch_fp32"], 3) if s_f and "torch_fp32" in peers else None,
            })
            log(f"{run['kernels']:9s} {ratios[-1]['input']:12s} width {r['width']}: int8 {s_i} ms "
                f"({ratios[-1]['int8_vs_ort_int8']}x ORT int8), float {s_f} ms ({ratios[-1]['float_vs_ort_fp32']}x ORT fp32)")

    doc = {
        "benchmark": "encoder latency, 1 thread",
        "cpu": cpu,
        "model": str(args.model),
        "architecture": arch.get("name"),
        "input": {"shape": [1, c, h, w], "occupancy": args.occupancy, "seed": args.seed},
        "runs": args.runs, "warmup": args.warmup,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
                     "numpy": np.__version__},
        "peers": {"torch_fp32": "PyTorch eval, BN folded, torch.set_num_threads(1)",
                  "ort_fp32": "ONNX Runtime CPU EP, BN-folded Conv+Relu graph, 1 intra / 1 inter thread, sequential",
                  "ort_int8": "ONNX Runtime CPU EP, QuantizeLinear + QLinearConv chain + DequantizeLinear from the "
                              "file's int8 tensors, 1 intra / 1 inter thread, sequential"},
        "ratios": "SlimSplit p50 / peer p50 (below 1: SlimSplit faster)",
        "slimsplit": {k: v for k, v in slim.items() if k not in ("results", "runs")},
        "peers_by_width": rows,
        "slimsplit_runs": slim_runs,
        "ratios_by_kernel": ratios,
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
