"""Multi-date vs single-date on the eo-learn Slovenia sample ($EOFORGE_SAMPLES/eolearn-slovenia-s2).

Five dated Sentinel-2 L1C scenes (13 bands, 101 x 100 px), the Slovenian land-use reference (lulc.tif) and
per-date cloud masks. The script

1. writes each date's bands with its cloud mask applied (cloudy pixels NaN) under OUT/inputs — the only
   preprocessing; two of the five dates are fully cloudy;
2. runs the single-date U-Net on one clear date (2015-08-30) → OUT/single;
3. runs the multi-date config (all five dates, ``prepare.min_valid_date: 0.5`` drops the cloudy ones, NDVI per
   date) with a temporal model → OUT/multi, scoring the single-date U-Net's map as a baseline on the same test
   pixels (``evaluate.baselines``), so OUT/multi/report.html holds both sets of metrics (and the random forest);
4. checks that both runs have the same chips and splits, and prints the metrics and the wall time.

    python examples/slovenia_multidate.py --out runs/slovenia [--arch tempcnn] [--epochs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import yaml

from eoforge.chips import ChipStore
from eoforge.config import load_config
from eoforge.pipeline import run

DATES = ["2015-07-11", "2015-07-31", "2015-08-20", "2015-08-30", "2015-09-09"]
SINGLE = "2015-08-30"
BANDS = [  # B01 ... B12 as STAC common names (B09 water vapour = nir09, B10 = cirrus)
    "coastal", "blue", "green", "red", "rededge071", "rededge075", "rededge078",
    "nir", "nir08", "nir09", "cirrus", "swir16", "swir22",
]  # fmt: skip
CLASSES = {1: "cultivated land", 2: "forest", 3: "grassland", 4: "shrubland", 8: "artificial surface"}


def masked_inputs(sample: Path, out: Path) -> dict[str, str]:
    """Each date's 13 bands with the cloud mask of that date applied (NaN = cloud), as float32 GeoTIFFs."""
    out.mkdir(parents=True, exist_ok=True)
    with rasterio.open(sample / "derived" / "cloudmask_68dates.tif") as src:
        by_date = {d[:10]: i + 1 for i, d in enumerate(src.descriptions)}
        clouds = {d: src.read(by_date[d]).astype(bool) for d in DATES}
    files = {}
    for d in DATES:
        with rasterio.open(sample / "derived" / f"s2l1c_{d}.tif") as src:
            data, profile = src.read().astype(np.float32), src.profile
        data[:, clouds[d]] = np.nan
        profile.update(dtype="float32", nodata=float("nan"))
        path = out / f"s2l1c_{d}_masked.tif"
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(data)
            dst.descriptions = tuple(BANDS)
        files[d] = str(path)
        print(f"{d}: {clouds[d].mean():.0%} cloud")
    return files


def config(files: dict[str, str], sample: Path, arch: str, epochs: int, single_map: Path | None) -> dict:
    cfg: dict = {
        "inputs": {
            "bands": BANDS,
            "labels": {"path": str(sample / "derived" / "lulc.tif")},
            "classes": CLASSES,
        },
        "prepare": {"indices": ["NDVI"]},
        "chips": {
            "size": 32,
            "stride": 16,
            "min_valid": 0.3,
            "split": {"val": 0.2, "test": 0.25, "block_size": 32},
        },
        "train": {"epochs": epochs, "batch_size": 8, "lr": 0.003, "patience": epochs, "num_workers": 0},
        "predict": {"tile": 64, "overlap": 16},
        "evaluate": {"bootstrap": 200, "rf_pixels": 5000},
    }
    if single_map is None:
        cfg["inputs"]["images"] = [files[SINGLE]]
        cfg["model"] = {"arch": "unet", "encoder": "resnet18"}
    else:
        cfg["inputs"]["images"] = {d: [p] for d, p in files.items()}
        cfg["prepare"] |= {"min_valid_date": 0.5}
        cfg["model"] = {"arch": arch, "encoder": "w32"}
        cfg["train"]["augment"] = {"d4": True, "brightness": 0.0, "contrast": 0.0, "noise": 0.02}
        cfg["evaluate"]["baselines"] = [{"map": str(single_map), "name": f"U-Net, single date {SINGLE}"}]
    return cfg


def same_split(a: Path, b: Path) -> bool:
    ia, ib = ChipStore.load(a / "chips").index(), ChipStore.load(b / "chips").index()
    cols = ["row", "col", "split"]
    return len(ia) == len(ib) and bool((ia[cols].to_numpy() == ib[cols].to_numpy()).all())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/slovenia"))
    ap.add_argument("--arch", default="tempcnn", help="temporal model: tempcnn or ltae")
    ap.add_argument("--epochs", type=int, default=40)
    args = ap.parse_args(argv)
    samples = os.environ.get("EOFORGE_SAMPLES")
    sample = Path(samples or "") / "eolearn-slovenia-s2"
    if not samples or not sample.is_dir():
        print("set EOFORGE_SAMPLES to the folder holding eolearn-slovenia-s2", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    files = masked_inputs(sample, args.out / "inputs")
    times, cpu = {}, {}
    for name in ("single", "multi"):
        single_map = None if name == "single" else args.out / "single" / "map.tif"
        path = args.out / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config(files, sample, args.arch, args.epochs, single_map)))
        t, c = time.perf_counter(), time.process_time()
        run(load_config(path), args.out / name)  # an up-to-date run (same config and inputs) is kept
        times[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
    m = json.loads((args.out / "multi" / "metrics.json").read_text())
    scene = json.loads((args.out / "multi" / "prepared" / "scene.json").read_text())
    print(
        f"dates kept: {', '.join(scene['temporal']['dates'])}; dropped: {scene['temporal']['dropped_dates']}"
    )
    print(f"same chips and splits in both runs: {same_split(args.out / 'single', args.out / 'multi')}")
    print(f"test split: {m['test_blocks']} blocks, {m['pixels']} labelled pixels")
    rows = [(f"{args.arch} ({len(scene['temporal']['dates'])} dates)", m)] + [
        (b["name"], b) for b in m["baselines"]
    ]
    print(f"{'model':<36} {'OA':>6} {'kappa':>6} {'mIoU':>6} {'macro F1':>8}")
    for name, r in rows:
        f1 = r.get("macro_f1", r.get("f1_macro"))
        print(
            f"{name:<36} {r['overall_accuracy']:6.3f} {r['kappa']:6.3f} {r['mean_iou']:6.3f} "
            f"{f1 if f1 is None else format(f1, '8.3f')}"
        )
    total = time.perf_counter() - t0
    print(
        f"wall time: single-date run {times['single']:.0f} s (CPU {cpu['single']:.0f} s), multi-date run "
        f"{times['multi']:.0f} s (CPU {cpu['multi']:.0f} s), total {total:.0f} s"
    )
    print(f"report with both: {args.out / 'multi' / 'report.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
