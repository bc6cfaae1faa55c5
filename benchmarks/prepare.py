"""`eoforge prepare` on a generated Sentinel-2-like tile (13 single-band uint16 files at 10/20/60 m) vs. a plain
rasterio read-and-write of the same windows, from one run.

    .venv/bin/python benchmarks/prepare.py [--size 10980] [--block 512] [--tmp DIR] [--workers N]

The scene is a full S2 tile at --size 10980 (4 bands at 10 m, 6 at 20 m, 3 at 60 m, named like a SAFE granule's
IMG_DATA files, `inputs.sensor: sentinel2-l1c`). Both runs happen in child processes that report their own peak
RSS: (1) `eoforge prepare` (alignment onto the 10 m grid with WarpedVRT, scale/offset, label burning, streaming
statistics, zstd float32 GeoTIFF + labels), (2) the plain baseline: for every 512-px window, `rasterio` reads each
file resampled onto the window (`out_shape`, bilinear) and writes the float32 stack with the same profile.
Prints both wall and CPU times (imports excluded; CPU of all threads), peak RSS and the throughput ratio
prepare / plain (the prepare child runs the Python API; the CLI adds the torch import, about 600 MiB, see
PERFORMANCE.md), and the disk used. Everything is written under a temporary folder (``--tmp``, default the
system's) removed at exit; plain.tif is deleted before prepare runs, so the peak is inputs + one output (about
6.5 GiB at --size 10980, measured at 4392: 1.0 GiB; the script checks for 9 GiB free first). With --workers N,
prepare runs a third time with its windows read on a LocalCluster of N single-threaded workers
(``compute.workers``; :mod:`eoforge.prepare.parallel`), timed after the cluster started.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import yaml
from affine import Affine
from rasterio.windows import Window

BANDS = {
    10: ["B02", "B03", "B04", "B08"],
    20: ["B05", "B06", "B07", "B8A", "B11", "B12"],
    60: ["B01", "B09", "B10"],
}
X0, Y0 = 600000.0, 5100000.0


def tile_inputs(folder: Path, size: int) -> dict[str, Any]:
    """Write the generated tile and two label polygons (left/right halves) under ``folder``; return the run
    config's ``inputs`` section for them."""
    import geopandas as gpd
    from shapely.geometry import box

    paths = make_tile(folder, size)
    ext = size * 10
    gpd.GeoDataFrame(
        {"c": ["a", "b"]},
        geometry=[box(X0, Y0 - ext, X0 + ext / 2, Y0), box(X0 + ext / 2, Y0 - ext, X0 + ext, Y0)],
        crs="EPSG:32633",
    ).to_file(folder / "labels.gpkg")
    return {
        "images": [str(p) for p in paths],
        "sensor": "sentinel2-l1c",
        "labels": {"path": str(folder / "labels.gpkg"), "column": "c"},
        "classes": {1: "a", 2: "b"},
    }


def make_tile(root: Path, size: int) -> list[Path]:
    """13 single-band uint16 files written block by block (tiled 512, zstd level 1: quick to write), so memory
    stays small."""
    rng = np.random.default_rng(0)
    d = root / "S2A_MSIL1C_20240601T100601_N0510_R022_T33TWM_20240601T120000.SAFE" / "IMG_DATA"
    d.mkdir(parents=True)
    paths = []
    for res, names in BANDS.items():
        n = size * 10 // res
        for name in names:
            p = d / f"T33TWM_20240601T100601_{name}.jp2.tif"
            profile = {
                "driver": "GTiff", "width": n, "height": n, "count": 1, "dtype": "uint16", "nodata": 0,
                "crs": "EPSG:32633", "transform": Affine(res, 0, X0, 0, -res, Y0), "tiled": True,
                "blockxsize": 512, "blockysize": 512, "compress": "zstd", "zstd_level": 1,
            }  # fmt: skip
            with rasterio.open(p, "w", **profile) as dst:
                for r in range(0, n, 1024):
                    h = min(1024, n - r)
                    dst.write(rng.integers(1000, 9000, (1, h, n), dtype=np.uint16), window=Window(0, r, n, h))
            paths.append(p)
    return paths


def plain(paths: list[str], out: str, size: int, block: int) -> None:
    """The baseline: read every file resampled onto each window, write the float32 stack (same profile)."""
    srcs = [rasterio.open(p) for p in paths]
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": len(srcs), "dtype": "float32",
        "nodata": float("nan"), "crs": "EPSG:32633", "transform": Affine(10, 0, X0, 0, -10, Y0), "tiled": True,
        "blockxsize": 256, "blockysize": 256, "compress": "zstd", "zstd_level": 1, "BIGTIFF": "IF_SAFER",
    }  # fmt: skip
    with rasterio.open(out, "w", **profile) as dst:
        for r in range(0, size, block):
            for c in range(0, size, block):
                h, w = min(block, size - r), min(block, size - c)
                parts = []
                for s in srcs:
                    f = s.width / size  # source pixels per 10 m pixel
                    win = Window(c * f, r * f, w * f, h * f)
                    parts.append(
                        s.read(1, window=win, out_shape=(h, w), resampling=rasterio.enums.Resampling.bilinear)
                    )
                dst.write(np.stack(parts).astype(np.float32), window=Window(c, r, w, h))
    for s in srcs:
        s.close()


CHILD = """
import json, resource, sys, time
{setup}
r0 = resource.getrusage(resource.RUSAGE_SELF)
t0 = time.perf_counter()
{body}
ru = resource.getrusage(resource.RUSAGE_SELF)
cpu = ru.ru_utime + ru.ru_stime - r0.ru_utime - r0.ru_stime
print(json.dumps({{"secs": time.perf_counter() - t0, "cpu": cpu, "peak_mib": ru.ru_maxrss / 1024}}))
"""


def child(setup: str, body: str) -> dict[str, float]:
    """Run ``setup`` (imports, not timed) then ``body`` (timed: wall, CPU of all threads) in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(setup=setup, body=body)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


DASK_CHILD = """
import json, resource, time
from pathlib import Path
from eoforge.config import load_config
from eoforge.prepare.stack import prepare_on
import eoforge.prepare.indices, eoforge.prepare.parallel, eoforge.prepare.recipe
if __name__ == "__main__":
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers={workers}, threads_per_worker=1, processes=True, dashboard_address=":0") as cl, \\
            Client(cl) as client:
        client.run(lambda: __import__("eoforge.prepare.parallel"))  # imports on the workers, not timed
        cfg = load_config({cfg!r})
        w0, c0, t0 = sum(client.run(time.process_time).values()), time.process_time(), time.perf_counter()
        prepare_on(cfg.inputs, Path({out!r}), {block}, cfg.prepare, client=client)
        secs = time.perf_counter() - t0
        cpu = time.process_time() - c0 + sum(client.run(time.process_time).values()) - w0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({{"secs": secs, "cpu": cpu, "peak_mib": peak}}))
"""
"""``prepare`` with its windows read by a LocalCluster of single-threaded workers started before timing; CPU of
this process and the workers; peak RSS of this process (the writer; each worker holds a few windows)."""


def du(path: Path) -> int:
    """Bytes of the files under ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--size", type=int, default=10980, help="side of the 10 m grid in pixels (a multiple of 6)"
    )
    ap.add_argument("--block", type=int, default=512)
    ap.add_argument("--tmp", default=None, help="folder for the temporary files (default: the system's)")
    ap.add_argument("--workers", type=int, default=0, help="also run prepare's reads on N local Dask workers")
    args = ap.parse_args()
    if args.size % 6:
        ap.error("--size must be a multiple of 6 (whole 60 m pixels)")
    t_all = time.perf_counter()
    # measured at zstd level 1 on this random data: inputs 10, plain.tif 33, prepared 46 bytes per 10 m pixel;
    # plain.tif is deleted before prepare runs, so the peak is about 56 bytes/px; ask for 80 to be safe
    need = args.size**2 * 80
    free = shutil.disk_usage(args.tmp or tempfile.gettempdir()).free
    print(f"temporary files under {args.tmp or tempfile.gettempdir()}: {free / 2**30:.1f} GiB free, "
          f"about {need / 2**30:.1f} GiB needed at most")  # fmt: skip
    if free < need:
        sys.exit(f"not enough free disk ({free / 2**30:.1f} GiB < {need / 2**30:.1f} GiB); pass --tmp DIR")
    with tempfile.TemporaryDirectory(prefix="eoforge-bench-prepare-", dir=args.tmp) as tmp_s:
        tmp = Path(tmp_s)
        t0 = time.perf_counter()
        inputs = tile_inputs(tmp, args.size)
        gen = time.perf_counter() - t0
        paths = [Path(p) for p in inputs["images"]]
        cfg = {"inputs": inputs}
        (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
        disk_in = du(tmp)
        # the same 13 files, ordered as the sensor orders them (plain reads them in this order too)
        ordered = sorted(
            paths, key=lambda p: [n for ns in BANDS.values() for n in ns].index(p.name.split("_")[2][:3])
        )
        base = child(
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom prepare import plain",
            f"plain({[str(p) for p in ordered]!r}, {str(tmp / 'plain.tif')!r}, {args.size}, {args.block})",
        )
        disk_plain = (tmp / "plain.tif").stat().st_size
        (tmp / "plain.tif").unlink()  # keep the peak disk use at inputs + one output
        prep = child(
            "from eoforge.config import load_config\nfrom eoforge.prepare import prepare\n"
            "import eoforge.prepare.indices, eoforge.prepare.recipe",
            f"cfg = load_config({str(tmp / 'cfg.yaml')!r})\n"
            f"prepare(cfg.inputs, {str(tmp / 'run')!r}, block={args.block}, prep=cfg.prepare)",
        )
        disk_prep = du(tmp / "run")
        dask = None
        if args.workers:
            shutil.rmtree(tmp / "run")  # keep the peak disk use at inputs + one output
            out = subprocess.run(
                [sys.executable, "-c", DASK_CHILD.format(workers=args.workers, cfg=str(tmp / "cfg.yaml"),
                                                         out=str(tmp / "run"), block=args.block)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            dask = json.loads(out.stdout.strip().splitlines()[-1])
        mp = args.size * args.size / 1e6
        out_gib = args.size * args.size * 13 * 4 / 2**30
        print(f"scene {args.size} x {args.size} (10 m grid, {mp:.1f} MP), 13 bands (4 x 10 m, 6 x 20 m, 3 x 60 m) "
              f"uint16; generated in {gen:.0f} s; float32 stack {out_gib:.2f} GiB before compression")  # fmt: skip
        for name, r in (("plain rasterio read+write", base), ("eoforge prepare (Python API)", prep)):
            print(f"{name:29s}: {r['secs']:.1f} s wall ({mp / r['secs']:.2f} MP/s), {r['cpu']:.1f} s CPU, "
                  f"peak RSS {r['peak_mib']:.0f} MiB")  # fmt: skip
        print(f"throughput ratio prepare / plain: {base['secs'] / prep['secs']:.2f} (wall), "
              f"{base['cpu'] / prep['cpu']:.2f} (CPU time)")  # fmt: skip
        if dask is not None:
            print(f"prepare on {args.workers} Dask workers: {dask['secs']:.1f} s wall, {dask['cpu']:.1f} s CPU "
                  f"(this process + workers), writer's peak RSS {dask['peak_mib']:.0f} MiB; wall ratio to "
                  f"in-process prepare {prep['secs'] / dask['secs']:.2f}")  # fmt: skip
        print(f"disk: inputs {disk_in / 2**30:.2f} GiB, plain.tif {disk_plain / 2**30:.2f} GiB, prepared "
              f"{disk_prep / 2**30:.2f} GiB; peak {(disk_in + max(disk_plain, disk_prep)) / 2**30:.2f} GiB "
              "(all removed at exit)")  # fmt: skip
    print(f"benchmark wall time {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()
