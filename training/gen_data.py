#!/usr/bin/env python3
"""Record the training / validation / test scenes (training/scenes/*.yaml) with the simulator and
export them as BEV shards (docs/dataset-format.md). Deterministic: fixed seeds per split.

    python training/gen_data.py --bin /tmp/slimsplit-bin --out /work/data

Writes OUT/{train,val,test}/rec/*.mcap and OUT/{train,val,test}/shards/*.safetensors.
Train, validation and test use different scene layouts (training/scenes/) and different seeds.
"""
from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPLITS = {
    # split: [(scene, seeds)]
    "train": [("train-int-a", range(1, 7)), ("train-int-b", range(11, 17)), ("train-int-c", range(21, 27)),
              ("train-str-a", range(31, 37)), ("train-str-b", range(41, 47))],
    "val": [("val-int", range(101, 103)), ("val-str", range(111, 113))],
    "test": [("test-int", range(201, 204)), ("test-int-wide", range(211, 214)), ("test-str", range(221, 224)),
             ("test-int-busy", range(231, 234)), ("test-str4", range(241, 244))],
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="/tmp/slimsplit-bin")
    ap.add_argument("--out", default="/work/data")
    a = ap.parse_args()
    for split, items in SPLITS.items():
        rec_dir = Path(a.out) / split / "rec"
        shard_dir = Path(a.out) / split / "shards"
        rec_dir.mkdir(parents=True, exist_ok=True)
        recs = []
        for scene, seeds in items:
            for s in seeds:
                out = rec_dir / f"{scene}-s{s}.mcap"
                if not out.exists():
                    subprocess.run([a.bin, "record", "--scene", str(HERE / "scenes" / f"{scene}.yaml"),
                                    "--seed", str(s), "--out", str(out)], check=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                recs.append(str(out))
        subprocess.run([a.bin, "dataset", "export", "--recordings", *recs, "--out", str(shard_dir)], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(split, len(recs), "recordings ->", shard_dir)


if __name__ == "__main__":
    main()
