"""End-to-end `eoforge predict` throughput vs. the same model on in-memory batches, from one run.

    .venv/bin/python benchmarks/predict.py [--size 2048] [--bands 4] [--classes 5] [--precision fp32]
    .venv/bin/python benchmarks/predict.py --memory --size 8000   # peak RSS of the CLI on an 8000 x 8000 scene

Prints pixels/s of the whole pipeline (read, normalise, model, stitch, write, COG) on a generated uint16
GeoTIFF, pixels/s of the model alone on the same number of windows already in memory, and their ratio.
With --memory it runs `eoforge predict` in a child process and prints its peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

from eoforge.geo import overlap_tiles
from eoforge.models import create_model
from eoforge.package import ClassInfo, PackageMeta, load_package, save_package
from eoforge.predict import predict


def make_scene(path: Path, size: int, bands: int) -> None:
    """A random uint16 scene written block by block (tiled 512, uncompressed), so memory stays small."""
    rng = np.random.default_rng(0)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16", "nodata": 0,
        "crs": "EPSG:32633", "transform": Affine(10, 0, 500000, 0, -10, 5000000),
        "tiled": True, "blockxsize": 512, "blockysize": 512,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, size, 512):
            h = min(512, size - r)
            block = rng.integers(1, 10000, (bands, h, size), dtype=np.uint16)
            dst.write(block, window=rasterio.windows.Window(0, r, size, h))


def make_package(path: Path, bands: int, classes: int, tile: int, overlap: int) -> Path:
    torch.manual_seed(0)
    meta = PackageMeta(
        arch="unet", encoder="resnet18", bands=[f"b{i}" for i in range(bands)], mean=[5000.0] * bands,
        std=[2900.0] * bands, nodata=None, chip_size=tile // 2,
        classes=[ClassInfo(i + 1, f"c{i + 1}", "#808080") for i in range(classes)], tile=tile, overlap=overlap,
    )  # fmt: skip
    return save_package(path, create_model("unet", bands, classes, "resnet18"), meta, {"benchmark": True})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=2048, help="scene side in pixels")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--memory", action="store_true", help="measure peak RSS of the CLI in a child process")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        scene = tmp / "scene.tif"
        make_scene(scene, args.size, args.bands)
        pkg = make_package(tmp / "model", args.bands, args.classes, args.tile, args.overlap)
        mp = args.size * args.size / 1e6
        print(f"scene {args.size} x {args.size} x {args.bands} uint16 ({mp:.1f} MP), unet/resnet18, "
              f"tile {args.tile}, overlap {args.overlap}, batch {args.batch_size}, {args.precision}, "
              f"torch threads {torch.get_num_threads()}")  # fmt: skip
        if args.memory:
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "eoforge.cli", "-q", "predict", str(pkg), str(scene), "-o",
                   str(tmp / "map.tif"), "--batch-size", str(args.batch_size), "--precision", args.precision]  # fmt: skip
            subprocess.run(cmd, check=True)
            secs = time.perf_counter() - t0
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
            scene_mb = args.size * args.size * args.bands * 4 / 2**20
            print(f"eoforge predict (CLI): {secs:.1f} s, {mp / secs:.3f} MP/s, peak RSS {peak_mb:.0f} MiB "
                  f"(the scene as float32 would be {scene_mb:.0f} MiB; ratio {peak_mb / scene_mb:.2f})")  # fmt: skip
            return
        res = predict(pkg, [scene], tmp / "map.tif", batch_size=args.batch_size, precision=args.precision)
        pipe = res.pixels_per_second
        # the model alone: the same windows, already normalised in memory, same batch size
        predictor = load_package(pkg, precision=args.precision)
        n = len(list(overlap_tiles(args.size, args.size, args.tile, args.overlap)))
        batch = np.random.default_rng(1).uniform(
            1, 10000, (args.batch_size, args.bands, args.tile, args.tile)
        )
        batch = batch.astype(np.float32)
        predictor.predict_index(batch)  # warm-up
        t0 = time.perf_counter()
        for i in range(0, n, args.batch_size):
            predictor.predict_index(batch[: min(args.batch_size, n - i)])
        model_secs = time.perf_counter() - t0
        model = args.size * args.size / model_secs
        print(
            f"pipeline  (eoforge predict, {res.windows} windows): {pipe / 1e6:.3f} MP/s ({res.seconds:.1f} s)"
        )
        print(f"model alone (same windows, in memory):           {model / 1e6:.3f} MP/s ({model_secs:.1f} s)")
        print(f"ratio pipeline / model alone: {pipe / model:.2f}")


if __name__ == "__main__":
    main()
