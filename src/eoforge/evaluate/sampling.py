"""Stratified random sample design over a class map (strata = map classes), streamed block by block.

Two passes over the map: the first counts the pixels of every class; the allocation then fixes how many
points each class gets, ``n_i`` random ranks among the class's pixels are drawn (seeded), and the second pass
turns those ranks into pixel centres. Memory is one block plus the sample, never the scene.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
from rasterio.windows import Window

from eoforge.errors import DataError, InputError
from eoforge.geo import Grid
from eoforge.io.atomic import atomic_path
from eoforge.io.rasters import block_windows, grid_of, open_raster

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MapClasses:
    """The classes of a map and their pixel counts (the strata of an area estimate)."""

    path: Path
    grid: Grid
    ids: list[int]
    pixels: list[int]
    nodata: float | None

    @property
    def pixel_area_ha(self) -> float | None:
        return pixel_area_ha(self.grid, self.path)


def pixel_area_ha(grid: Grid, path: Path) -> float | None:
    """Area of one pixel in hectares for a projected CRS in metres (``None`` for geographic CRSs)."""
    from pyproj import CRS

    crs = CRS.from_user_input(grid.crs)
    if crs.is_geographic:
        log.warning(
            "%s: geographic CRS, areas are given in pixels only; reproject to an equal-area CRS", path
        )
        return None
    factor = crs.axis_info[0].unit_conversion_factor if crs.axis_info else 1.0
    t = grid.transform
    return abs(t.a * t.e - t.b * t.d) * factor**2 / 10_000.0


def map_blocks(src: rasterio.DatasetReader, block: int) -> Iterator[tuple[Window, np.ndarray, np.ndarray]]:
    """``(window, values, valid)`` for every block of band 1 of a class map."""
    grid = grid_of(src)
    nd = src.nodata
    for win in block_windows(grid, block):
        a = src.read(1, window=win)
        valid = np.ones(a.shape, bool) if nd is None else a != nd
        if a.dtype.kind == "f":
            valid &= ~np.isnan(a)
        yield win, a, valid


def open_map(path: str | Path) -> rasterio.DatasetReader:
    """Open a class map: one band of integer class ids with a CRS."""
    path = Path(path)
    src = open_raster(path)
    if src.crs is None:
        src.close()
        raise DataError(f"{path}: the map has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
    if src.count != 1 or src.dtypes[0] not in ("uint8", "uint16", "int8", "int16", "int32", "uint32"):
        desc = f"{src.count} bands of {src.dtypes[0]}"
        src.close()
        raise InputError(
            f"{path}: a class map is one band of integer class ids, this has {desc}; give a class map"
        )
    return src


def count_classes(path: str | Path, block: int = 1024) -> MapClasses:
    """Pixels per class of a class map (nodata excluded), in one streaming pass."""
    path = Path(path)
    counts: dict[int, int] = {}
    with open_map(path) as src:
        grid = grid_of(src)
        for _, a, valid in map_blocks(src, block):
            u, c = np.unique(a[valid], return_counts=True)
            for v, n in zip(u.tolist(), c.tolist(), strict=True):
                counts[int(v)] = counts.get(int(v), 0) + int(n)
        nodata = src.nodata
    if not counts:
        raise InputError(f"{path}: every pixel of the map is nodata; check the map's nodata value")
    ids = sorted(counts)
    return MapClasses(path, grid, ids, [counts[i] for i in ids], nodata)


def allocate(pixels: list[int] | np.ndarray, total: int, min_per_class: int = 0) -> np.ndarray:
    """Sample size per class: proportional to area, but at least ``min_per_class`` (Olofsson et al. 2014,
    section 4.1.2 recommend such a minimum for rare classes), never more than a class's pixels.

    The classes raised to the minimum keep it; the rest of ``total`` is shared in proportion to area among the
    others, repeated until stable; rounding by largest remainder so the sizes add up to ``total``.
    """
    npx = np.asarray(pixels, dtype=np.int64)
    if total <= 0:
        raise InputError(f"--total {total}: the sample size must be positive")
    if min_per_class < 0:
        raise InputError(f"--min-per-class {min_per_class}: must be 0 or more")
    if total > npx.sum():
        raise InputError(
            f"--total {total} is more than the map's {int(npx.sum())} classified pixels; lower it"
        )
    floor = np.minimum(npx, min_per_class)
    if floor.sum() > total:
        raise InputError(
            f"--min-per-class {min_per_class} x {len(npx)} classes needs {int(floor.sum())} points, more than "
            f"--total {total}; raise --total or lower --min-per-class"
        )
    fixed = np.zeros(len(npx), bool)
    n = np.zeros(len(npx), dtype=np.float64)
    for _ in range(len(npx) + 1):
        rest = total - floor[fixed].sum()
        free = ~fixed
        n = np.where(fixed, floor, rest * npx / max(npx[free].sum(), 1))
        n = np.minimum(n, npx)
        low = free & (n < floor)
        if not low.any():
            break
        fixed |= low
    base = np.floor(n).astype(np.int64)
    short = total - base.sum()
    if short > 0:
        room = np.where(base < npx, n - base, -1.0)
        for i in np.argsort(-room, kind="stable")[:short]:
            base[i] += 1
    return base


@dataclass(frozen=True)
class SampleDesign:
    path: Path
    classes: MapClasses
    allocation: list[int]


def sample_design(
    map_path: str | Path,
    out: str | Path,
    total: int,
    min_per_class: int = 0,
    seed: int = 0,
    block: int = 1024,
) -> SampleDesign:
    """Draw a stratified random sample of pixel centres from a class map and write it as a point file.

    The draw depends on ``seed`` and ``block`` (ranks follow the block scan order); both default to fixed values.

    The points carry ``map_class`` (the stratum) and an empty ``reference`` column to fill in; their order is
    random so that labelling a prefix keeps the design balanced.
    """
    out = Path(out)
    driver = vector_driver(out)
    classes = count_classes(map_path, block)
    alloc = allocate(classes.pixels, total, min_per_class)
    rng = np.random.default_rng(seed)
    # ranks (order of appearance in a row-major scan) of the chosen pixels, per class
    chosen = {
        cid: np.sort(rng.choice(npx, size=int(k), replace=False))
        for cid, npx, k in zip(classes.ids, classes.pixels, alloc, strict=True)
        if k > 0
    }
    seen = dict.fromkeys(classes.ids, 0)
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    cls: list[np.ndarray] = []
    with open_map(map_path) as src:
        for win, a, valid in map_blocks(src, block):
            for cid, ranks in chosen.items():
                hit = valid & (a == cid)
                k = int(hit.sum())
                if k == 0:
                    continue
                lo, hi = np.searchsorted(ranks, [seen[cid], seen[cid] + k])
                if hi > lo:
                    r, c = np.nonzero(hit)
                    pick = ranks[lo:hi] - seen[cid]
                    rows.append(r[pick] + int(win.row_off))
                    cols.append(c[pick] + int(win.col_off))
                    cls.append(np.full(hi - lo, cid))
                seen[cid] += k
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    ids = np.concatenate(cls)
    order = rng.permutation(len(r))
    r, c, ids = r[order], c[order], ids[order]
    xs, ys = rasterio.transform.xy(classes.grid.transform, r, c, offset="center")
    gdf = gpd.GeoDataFrame(
        {
            "point_id": np.arange(len(r)),
            "map_class": ids.astype(np.int64),
            "row": r.astype(np.int64),
            "col": c.astype(np.int64),
            "reference": np.full(len(r), None, dtype=object),
        },
        geometry=gpd.points_from_xy(xs, ys),
        crs=classes.grid.crs,
    )
    gdf["reference"] = gdf["reference"].astype("string")
    write_points(gdf, out, driver)
    log.info(
        "wrote %d sample points to %s (allocation %s)",
        len(gdf),
        out,
        dict(zip(classes.ids, alloc.tolist(), strict=True)),
    )
    return SampleDesign(out, classes, [int(x) for x in alloc])


def write_points(gdf: gpd.GeoDataFrame, out: Path, driver: str) -> None:
    """Write a vector file atomically (under a temporary name with the right suffix, then renamed)."""
    with atomic_path(out) as tmp:
        named = tmp.with_name(tmp.name + out.suffix)
        try:
            gdf.to_file(named, driver=driver, layer=re.sub(r"\W", "_", out.stem) or "points")
            os.replace(named, tmp)
        finally:
            named.unlink(missing_ok=True)


VECTOR_DRIVERS = {".gpkg": "GPKG", ".geojson": "GeoJSON", ".json": "GeoJSON", ".fgb": "FlatGeobuf"}


def vector_driver(out: Path) -> str:
    """The OGR driver for a point file name, from its suffix."""
    drivers = VECTOR_DRIVERS
    if out.suffix.lower() not in drivers:
        raise InputError(f"{out}: unknown vector format; use one of {', '.join(drivers)}")
    return drivers[out.suffix.lower()]
