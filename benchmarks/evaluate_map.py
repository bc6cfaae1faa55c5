"""`eoforge evaluate --map` and `eoforge sample-design` throughput and peak memory, from one run.

    .venv/bin/python benchmarks/evaluate_map.py [--size 4096]

Generates a uint8 class map (tiled 512) and a reference raster that disagrees on ~10 % of the pixels, on the
same grid and on a reprojected grid (EPSG:3857), then prints, in one run:
- Mpx/s of `compare_map` (same grid, then warped) against a plain rasterio read of the same blocks of both files,
  and their ratio;
- Mpx/s of the two-pass `sample_design`;
- peak RSS of `eoforge evaluate --map` in a child process (memory must not grow with the scene).
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
from affine import Affine
from rasterio.warp import calculate_default_transform
from rasterio.windows import Window

from eoforge.evaluate.compare import compare_map
from eoforge.evaluate.sampling import sample_design
from eoforge.io.rasters import block_windows, grid_of

PROFILE = {
    "driver": "GTiff", "count": 1, "dtype": "uint8", "nodata": 255, "crs": "EPSG:32633",
    "transform": Affine(10, 0, 500000, 0, -10, 5000000), "tiled": True, "blockxsize": 512, "blockysize": 512,
}  # fmt: skip


def make_maps(folder: Path, size: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    m, r = folder / "map.tif", folder / "ref.tif"
    with (
        rasterio.open(m, "w", width=size, height=size, **PROFILE) as dm,
        rasterio.open(r, "w", width=size, height=size, **PROFILE) as dr,
    ):
        for row in range(0, size, 512):
            h = min(512, size - row)
            block = (np.arange(size)[None, :] // 700 + np.arange(row, row + h)[:, None] // 900) % 6
            block = block.astype(np.uint8)
            wrong = rng.random(block.shape) < 0.1
            win = Window(0, row, size, h)
            dm.write(block, 1, window=win)
            dr.write(np.where(wrong, (block + 1) % 6, block).astype(np.uint8), 1, window=win)
    return m, r


def reproject_copy(src_path: Path, dst_path: Path) -> Path:
    """The reference on an EPSG:3857 grid (written through a WarpedVRT, block by block)."""
    from rasterio.vrt import WarpedVRT

    with rasterio.open(src_path) as src:
        tr, w, h = calculate_default_transform(src.crs, "EPSG:3857", src.width, src.height, *src.bounds)
        with WarpedVRT(src, crs="EPSG:3857", transform=tr, width=w, height=h) as vrt:
            prof = {**PROFILE, "crs": "EPSG:3857", "transform": tr, "width": w, "height": h}
            with rasterio.open(dst_path, "w", **prof) as dst:
                for win in block_windows(grid_of(vrt), 512):
                    dst.write(vrt.read(1, window=win), 1, window=win)
    return dst_path


def plain_read(m: Path, r: Path) -> float:
    t0 = time.perf_counter()
    with rasterio.open(m) as a, rasterio.open(r) as b:
        for win in block_windows(grid_of(a), 1024):
            a.read(1, window=win)
            b.read(1, window=win)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=4096, help="map side in pixels")
    args = ap.parse_args()
    mpx = args.size**2 / 1e6
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        m, r = make_maps(folder, args.size)
        r3857 = reproject_copy(r, folder / "ref3857.tif")
        base = plain_read(m, r)
        t0 = time.perf_counter()
        cmp = compare_map(m, r)
        same = time.perf_counter() - t0
        oa = np.trace(cmp.confusion) / cmp.confusion.sum()
        t0 = time.perf_counter()
        compare_map(m, r3857)
        warped = time.perf_counter() - t0
        t0 = time.perf_counter()
        sample_design(m, folder / "pts.gpkg", total=1000, min_per_class=50)
        design = time.perf_counter() - t0
        print(f"map {args.size} x {args.size} ({mpx:.1f} Mpx), OA vs reference {oa:.3f}")
        print(f"plain read of both rasters : {mpx / base:8.1f} Mpx/s")
        print(f"compare_map, same grid     : {mpx / same:8.1f} Mpx/s  ratio to plain read {base / same:.2f}")
        print(
            f"compare_map, warped (3857) : {mpx / warped:8.1f} Mpx/s  ratio to plain read {base / warped:.2f}"
        )
        print(f"sample_design (2 passes)   : {mpx / design:8.1f} Mpx/s")
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        cmd = [
            sys.executable,
            "-m",
            "eoforge.cli",
            "-q",
            "evaluate",
            "--map",
            str(m),
            "--reference",
            str(r3857),
        ]
        subprocess.run([*cmd, "-o", str(folder / "out")], check=True, capture_output=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        print(f"peak RSS of eoforge evaluate --map (warped reference): {max(peak, before) / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
