"""The demo's accuracy under config variants: each variant runs the whole pipeline, and its map is scored on the
pixels of each split (``OUT/eval/splits.tif``: 1 train, 2 val, 3 test) against the demo's reference.

    PYTHONPATH=src python benchmarks/demo_variants.py VARIANTS.json --out runs/variants [--parallel 2]
        [--seeds 0,1,2] [--device cuda]

VARIANTS.json maps a name to a partial config merged into the demo's, e.g.
``{"base": {}, "effb0": {"model": {"encoder": "efficientnet-b0"}}}``. One JSON line per run goes to stdout and
to ``OUT/results.jsonl``; a summary table (means over seeds) follows. Select on the validation columns: the test
columns are what the demo reports, and choosing by them would overstate it. docs/PERFORMANCE.md ("Demo OA, sixth
round") holds a sweep made with this script's logic.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from eoforge.config import RunConfig
from eoforge.demo import CLASSES, LABELS, data_dir, demo_config
from eoforge.evaluate.metrics import metrics_from_confusion

SPLIT_CODES = {"train": 1, "val": 2, "test": 3}


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``, nested dicts key by key."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def score(out: Path) -> dict[str, Any]:
    """OA, mIoU over the classes present, and the classes never predicted, per split of a finished run."""
    with rasterio.open(out / "map.tif") as src:
        pred = src.read(1)
    with rasterio.open(out / "eval" / "splits.tif") as src:
        split = src.read(1)
    with rasterio.open(out / "prepared" / "image.tif") as src:
        valid = src.dataset_mask() > 0
    with rasterio.open(data_dir() / LABELS) as src:
        ref = src.read(1)
    ids = list(CLASSES)
    res: dict[str, Any] = {}
    for name, code in SPLIT_CODES.items():
        sel = (split == code) & (ref > 0) & valid & (pred != 255)
        # the report's own metrics, from this split's confusion matrix (reference classes on rows)
        r, p = np.searchsorted(ids, ref[sel]), np.searchsorted(ids, pred[sel])
        cm = np.bincount(r * len(ids) + p, minlength=len(ids) ** 2).reshape(len(ids), len(ids))
        m = metrics_from_confusion(cm, list(CLASSES.values()), ids)
        res[name] = {
            "oa": round(m["overall_accuracy"], 4),
            "miou": round(m["mean_iou"], 4),
            "never_predicted": [n for n, c in m["per_class"].items() if c["support"] and not c["predicted"]],
        }
    return res


def run_one(name: str, over: dict[str, Any], out: Path, device: str) -> dict[str, Any]:
    """Run the demo with ``over`` merged in (this process), score it, return the result row."""
    from eoforge import pipeline

    cfg = merge(demo_config().model_dump(mode="json"), over)
    cfg["predict"]["device"] = device
    t0 = time.perf_counter()
    pipeline.run(RunConfig.model_validate(cfg), out, resume=False)
    wall = time.perf_counter() - t0
    return {"name": name, "over": over, "wall_s": round(wall, 1), **score(out)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("variants", type=Path, help="JSON: name -> partial config")
    ap.add_argument("--out", type=Path, required=True, help="folder of the runs and results.jsonl")
    ap.add_argument("--seeds", default="0,1,2", help="train.seed values, comma-separated")
    ap.add_argument("--parallel", type=int, default=1, help="runs at a time (separate processes)")
    ap.add_argument("--device", default="cpu", help="predict.device (cpu, cuda)")
    ap.add_argument("--one", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)  # a child run
    a = ap.parse_args()
    if a.one:
        row = run_one(a.one[0], json.loads(a.one[1]), a.out / a.one[0], a.device)
        print(json.dumps(row), flush=True)
        return
    variants = json.loads(a.variants.read_text())
    jobs = [
        (f"{n}_s{s}", merge(o, {"train": {"seed": int(s)}}))
        for s in a.seeds.split(",")
        for n, o in variants.items()
    ]
    a.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))

    def child(job: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        cmd = [sys.executable, __file__, str(a.variants), "--out", str(a.out), "--device", a.device]
        p = subprocess.run(
            [*cmd, "--one", job[0], json.dumps(job[1])], capture_output=True, text=True, env=env
        )
        lines = p.stdout.strip().splitlines()
        row = (
            json.loads(lines[-1])
            if p.returncode == 0 and lines
            else {"name": job[0], "error": p.stderr[-600:]}
        )
        with open(a.out / "results.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        return row

    with ThreadPoolExecutor(a.parallel) as ex:
        rows = [r for r in ex.map(child, jobs) if "error" not in r]
    print(f"\n{'variant':24} runs  val OA  val mIoU  test OA  test mIoU  never predicted on test")
    for n in variants:
        rs = [r for r in rows if r["name"].rsplit("_s", 1)[0] == n]
        if not rs:
            print(f"{n:24} 0 runs finished")
            continue

        def mean(split: str, key: str, rs: list[dict[str, Any]] = rs) -> float:
            return float(np.mean([r[split][key] for r in rs]))

        missing = sorted({c for r in rs for c in r["test"]["never_predicted"]})
        print(
            f"{n:24} {len(rs):4}  {mean('val', 'oa'):.3f}   {mean('val', 'miou'):.3f}    {mean('test', 'oa'):.3f}"
            f"    {mean('test', 'miou'):.3f}     {', '.join(missing) or '-'}"
        )


if __name__ == "__main__":
    main()
