#!/usr/bin/env python3
"""Tests/Fixtures/eval/sample_python_ap.json: training/evaluate.py's AP on the committed sample
recording, which Tests/SlimPipelineTests (EvalAgreementTests) compares with `slimsplit eval`.

    python training/make_eval_fixture.py --bin .build/release/slimsplit [--model Models/slimsplit-bev.safetensors]

Exports Tests/Fixtures/sample.mcap as BEV shards (slimsplit dataset export) into a temporary
folder laid out as evaluate.py expects (DATA/test/shards), runs evaluate.py --quick on every frame,
and keeps the two quantized configurations the Swift test checks.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KEEP = ("intermediate, w=1.0, 8 bit", "intermediate, w=0.25, 4 bit")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default=str(ROOT / ".build/release/slimsplit"))
    ap.add_argument("--model", default=str(ROOT / "Models/slimsplit-bev.safetensors"))
    ap.add_argument("--out", default=str(ROOT / "Tests/Fixtures/eval/sample_python_ap.json"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        shards = Path(d) / "test/shards"
        subprocess.run([a.bin, "dataset", "export", "--recordings", str(ROOT / "Tests/Fixtures/sample.mcap"),
                        "--out", str(shards)], check=True, stdout=subprocess.DEVNULL)
        js = Path(d) / "eval.json"
        subprocess.run([sys.executable, str(HERE / "evaluate.py"), "--model", a.model, "--data", d, "--frame-stride", "1",
                        "--quick", "--json", str(js), "--png", str(Path(d) / "plot.png")], check=True)
        doc = json.loads(js.read_text())
    out = {"source": "training/evaluate.py --data <sample exported with slimsplit dataset export> --frame-stride 1 --quick "
                     "(model Models/slimsplit-bev.safetensors, recording Tests/Fixtures/sample.mcap); "
                     "written by training/make_eval_fixture.py",
           "meta": {k: doc["meta"][k] for k in ("frames", "ego_frames", "gt_boxes")},
           "results": [r for r in doc["results"] if r["name"] in KEEP]}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {a.out}: " + ", ".join(f"{r['name']}: AP@0.5 {r['ap']['0.5']:.1f}" for r in out["results"]))


if __name__ == "__main__":
    main()
