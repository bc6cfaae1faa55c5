"""Temporal models vs a random forest on 1,218 labelled MODIS NDVI series (sits, Sinop), same held-out 30 %.

Usage: EOFORGE_SAMPLES=/path/to/data python benchmarks/sits_modis.py [--epochs 100] [--seed 0]
The setting chosen on validation (docs/PERFORMANCE.md, MODIS 2026-11-23): ``OMP_NUM_THREADS=1 python
benchmarks/sits_modis.py --archs tempcnn --encoder w32 --epochs 60 --lr 3e-3 --ensemble 5 --seeds 0,1,2,3,4``.
Prints accuracy, Cohen's kappa and macro F1 of each model on the same seeded, stratified 30 % test split
(``--validation``: on a quarter of the 70 % instead, to choose settings without looking at the test part).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from eoforge.temporal.fit import evaluate_series, random_forest, train_series
from eoforge.temporal.series import location_split, read_series_csv, stratified_split

CSV = "sits-modis-ndvi-sinop-timeseries/derived/samples_modis_ndvi_long.csv"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default="", help="Comma-separated seeds (split and init) to average over")
    ap.add_argument("--archs", default="tempcnn,ltae,pixel-mlp")
    ap.add_argument("--encoder", default=None, help="Layout/width spec, e.g. t12-w32 (default t<dates>)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--weight-decay", type=float, default=1e-2)
    ap.add_argument("--noise", type=float, default=0.0, help="Gaussian jitter of training inputs (std units)")
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="Softened targets, e.g. 0.1")
    ap.add_argument("--mixup", type=float, default=0.0, help="Mixup Beta parameter, e.g. 0.2 (0 = off)")
    ap.add_argument("--ensemble", type=int, default=1, help="Seed ensemble: members averaged (probabilities)")
    ap.add_argument(
        "--validation",
        action="store_true",
        help="Score on a stratified 25 %% of the 70 %% training part (fit on the rest), never on the test part: "
        "for choosing settings",
    )
    ap.add_argument(
        "--by-location",
        action="store_true",
        help="Test on whole locations (the CSV's longitude/latitude; 732 places for 1,218 series of different "
        "years): a stratified group split (scikit-learn StratifiedGroupKFold, one fold of 3 ~ 33 %%) instead of "
        "the stratified 30 %%, so no place is in both parts",
    )
    args = ap.parse_args()
    root = os.environ.get("EOFORGE_SAMPLES")
    if not root:
        print("set EOFORGE_SAMPLES to the samples folder", file=sys.stderr)
        return 2
    series = read_series_csv(Path(root) / CSV)
    print(f"{len(series.ids)} series x {series.n_times} dates, classes {series.counts()}")
    seeds = [int(v) for v in args.seeds.split(",")] if args.seeds else [args.seed]
    acc: dict[str, list[float]] = {}
    for seed in seeds:
        tr, te = (
            location_split(series.labels, series.locations, 0.3, seed)
            if args.by_location
            else stratified_split(series.labels, 0.3, seed)
        )
        if args.validation:  # the test part stays unseen: fit on 75 % of the training part, score the rest
            fit, val = stratified_split(series.labels[tr], 0.25, 100 + seed)
            tr, te = tr[fit], tr[val]
        part = "validation" if args.validation else "test"
        how = "whole locations, stratified" if args.by_location else "stratified"
        print(f"seed {seed}: train {len(tr)}, {part} {len(te)} ({how})")
        print(f"{'model':<14}{'accuracy':>10}{'kappa':>8}{'macroF1':>9}{'fit s':>8}")
        t0 = time.perf_counter()
        rf = random_forest(series, tr, te, seed=seed)
        acc.setdefault("random forest", []).append(rf.accuracy)
        print(
            f"{'random forest':<14}{rf.accuracy:>10.4f}{rf.kappa:>8.4f}{rf.macro_f1:>9.4f}{time.perf_counter() - t0:>8.1f}"
        )
        for arch in args.archs.split(","):
            t0 = time.perf_counter()
            fitted = train_series(
                series,
                tr,
                arch=arch,
                encoder=args.encoder,
                epochs=args.epochs,
                batch_size=args.batch_size,
                lr=args.lr,
                weight_decay=args.weight_decay,
                seed=seed,
                noise=args.noise,
                ensemble=args.ensemble,
                label_smoothing=args.label_smoothing,
                mixup=args.mixup,
            )
            s = evaluate_series(fitted, series, te)
            acc.setdefault(arch, []).append(s.accuracy)
            dt = time.perf_counter() - t0
            print(
                f"{arch:<14}{s.accuracy:>10.4f}{s.kappa:>8.4f}{s.macro_f1:>9.4f}{dt:>8.1f}  (vs RF {s.accuracy / rf.accuracy:.3f}x)"
            )
    if len(seeds) > 1:
        part = "validation" if args.validation else "test"
        rf_acc = np.asarray(acc["random forest"])
        for name, values in acc.items():
            v = np.asarray(values)
            print(
                f"{part} accuracy over seeds {seeds}: {name:<14} mean {v.mean():.4f} +- {v.std(ddof=1):.4f} (sd), "
                f"range {v.min():.4f}-{v.max():.4f}, minus RF per seed {np.round(v - rf_acc, 4).tolist()}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
