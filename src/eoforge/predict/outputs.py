"""The outputs of a prediction: finished row bands kept on disk (resume state) and the final COGs.

Every finished row band is saved as one ``.npz`` in a hidden folder beside the map (``.MAP.parts``) together
with the key of the run that made it; a run started again with the same key reuses them. When all bands are
there they are copied, band after band, into tiled GeoTIFFs, turned into COGs and renamed into place
together, the map last, so the map exists only when every requested output is complete.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.windows import Window

from eoforge.geo import Grid
from eoforge.io.atomic import atomic_path, sweep_temporaries, write_text
from eoforge.io.blockcache import cachemax

log = logging.getLogger(__name__)

_BAND = re.compile(r"^band_(\d{6})\.npz$")
PROB_DTYPES = ("uint8", "float32")
UNCERTAINTIES = ("entropy", "max-prob")
#: rows of blocks GDAL may keep for a COG copy: its overview pass reads the source in chunks of block rows
COG_CACHE_ROWS = 1024
#: the least GDAL block cache any stage gets (small scenes: as fast as an unbounded cache)
MIN_CACHE_MB = 64


def gdal_cache_mb(width: int, bytes_per_pixel: int, rows: int) -> int:
    """A GDAL block-cache cap (``GDAL_CACHEMAX``, MiB) for streaming a raster ``width`` px wide by bands of
    ``rows`` rows, ``bytes_per_pixel`` over all its bands: room for those rows across the width, at least
    :data:`MIN_CACHE_MB`. GDAL's default cap (5 % of the RAM) keeps the blocks of a whole scene that fits in it,
    which made predict's peak memory grow with the scene height; this bounds it by the width."""
    if width <= 0 or bytes_per_pixel <= 0 or rows <= 0:
        raise ValueError(
            f"need positive width, bytes per pixel and rows, got {width}, {bytes_per_pixel}, {rows}"
        )
    return max(MIN_CACHE_MB, -(-width * bytes_per_pixel * rows // 2**20))


@dataclass
class BandResult:
    """One finished row band: class ids (nodata where invalid), and optional probabilities/uncertainty."""

    index: int
    row0: int
    classes: np.ndarray
    probs: np.ndarray | None = None
    uncertainty: np.ndarray | None = None


def extra_paths(
    out: Path, probabilities: str | None, uncertainty: str | None, vectorize: str | None
) -> dict[str, Path]:
    """Where the optional outputs of the map ``out`` go: ``MAP.probs.tif``, ``MAP.uncertainty.tif``, ``MAP.gpkg``."""
    stem = out.with_suffix("")
    paths = {}
    if probabilities:
        paths["probabilities"] = stem.with_name(stem.name + ".probs.tif")
    if uncertainty:
        paths["uncertainty"] = stem.with_name(stem.name + ".uncertainty.tif")
    if vectorize:
        paths["polygons"] = stem.with_name(stem.name + "." + vectorize)
    return paths


class Parts:
    """The resume state of one map: finished bands as ``band_NNNNNN.npz`` plus ``key.json``."""

    def __init__(self, out: Path, key: dict[str, Any], extras: tuple[Path, ...] = ()) -> None:
        self.dir = out.with_name(f".{out.name}.parts")
        for target in (out, *extras):
            # temporary files of an earlier run of this map, killed while renaming its outputs (a live
            # process's temporaries stay: the sweep checks the pid in their names)
            sweep_temporaries(target.parent, depth=0, name=target.name)
        self.key = json.dumps(key, sort_keys=True)
        key_file = self.dir / "key.json"
        if self.dir.is_dir() and (not key_file.is_file() or key_file.read_text() != self.key):
            log.info("%s: resume state from other arguments; starting afresh", self.dir)
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not key_file.is_file():
            write_text(key_file, self.key)

    def done(self) -> set[int]:
        return {int(m.group(1)) for p in self.dir.iterdir() if (m := _BAND.match(p.name))}

    def path(self, index: int) -> Path:
        return self.dir / f"band_{index:06d}.npz"

    def save(self, band: BandResult) -> None:
        arrays: dict[str, Any] = {"row0": np.array(band.row0), "classes": band.classes}
        if band.probs is not None:
            arrays["probs"] = band.probs
        if band.uncertainty is not None:
            arrays["uncertainty"] = band.uncertainty
        with atomic_path(self.path(band.index)) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    def load(self, index: int) -> BandResult:
        with np.load(self.path(index)) as z:
            return BandResult(
                index=index,
                row0=int(z["row0"]),
                classes=z["classes"],
                probs=z.get("probs", None),
                uncertainty=z.get("uncertainty", None),
            )

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _profile(grid: Grid, count: int, dtype: str, nodata: float | None) -> dict[str, Any]:
    return {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype,
        "nodata": nodata,
        "crs": grid.crs,
        "transform": grid.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "interleave": "band",
    }


def _to_cog(raw: Path, final: Path, resampling: str, predictor: str = "NO") -> None:
    with rasterio.open(raw) as src:
        bpp = src.count * np.dtype(src.dtypes[0]).itemsize + 1  # + 1: an internal mask
        cache = gdal_cache_mb(src.width, bpp, COG_CACHE_ROWS)
    with rasterio.Env(GDAL_CACHEMAX=cachemax(cache)):
        rasterio.shutil.copy(
            raw,
            final,
            driver="COG",
            # ZSTD level 1: at 8000² the class map's copy took 1.2 s of CPU instead of DEFLATE's 2.1 s, for
            # a file 17 % larger (LZW: 1.8 s, 85 % larger); GDAL reads ZSTD since 2.3 (docs/PERFORMANCE.md)
            compress="ZSTD",
            level=1,
            predictor=predictor,
            blocksize=256,
            overview_resampling=resampling,
            num_threads=os.cpu_count() or 1,
        )


def assemble(
    parts: Parts,
    n_bands: int,
    grid: Grid,
    out: Path,
    extras: dict[str, Path],
    class_dtype: str,
    nodata: int,
    colormap: dict[int, tuple[int, int, int, int]] | None,
    num_classes: int,
    probabilities: str | None,
    vectorize_fn: Callable[[Path, Path], None] | None = None,
    band_rows: int = 512,
) -> None:
    """Copy the saved bands into COGs: the map, then the optional outputs; rename them all when complete.
    ``band_rows`` (the most rows of a band) sizes the GDAL cache: a band touches its rows plus a partly
    written row of 256-px blocks above and below."""
    raw = {"map": parts.dir / "map.raw.tif"}
    if "probabilities" in extras:
        raw["probabilities"] = parts.dir / "probs.raw.tif"
    if "uncertainty" in extras:
        raw["uncertainty"] = parts.dir / "uncertainty.raw.tif"
    bpp = np.dtype(class_dtype).itemsize
    if "probabilities" in raw:
        bpp += num_classes * np.dtype(probabilities or "uint8").itemsize + 1  # + 1: the uint8 mask
    if "uncertainty" in raw:
        bpp += 4
    cache = gdal_cache_mb(grid.width, bpp, band_rows + 2 * 256)
    with contextlib.ExitStack() as stack:
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=cachemax(cache), GDAL_TIFF_INTERNAL_MASK=True))
        dst = {
            "map": stack.enter_context(
                rasterio.open(raw["map"], "w", **_profile(grid, 1, class_dtype, nodata))
            )
        }
        if colormap is not None:
            dst["map"].write_colormap(1, colormap)
        if "probabilities" in raw:
            pdt = probabilities or "uint8"
            # uint8 uses the full 0-255 range, so nodata is an internal mask instead of a value
            prof = _profile(grid, num_classes, pdt, None if pdt == "uint8" else float("nan"))
            dst["probabilities"] = stack.enter_context(rasterio.open(raw["probabilities"], "w", **prof))
        if "uncertainty" in raw:
            prof = _profile(grid, 1, "float32", float("nan"))
            dst["uncertainty"] = stack.enter_context(rasterio.open(raw["uncertainty"], "w", **prof))
        for k in range(n_bands):
            band = parts.load(k)
            h = band.classes.shape[0]
            win = Window(0, band.row0, grid.width, h)
            dst["map"].write(band.classes, 1, window=win)
            if "probabilities" in dst and band.probs is not None:
                dst["probabilities"].write(band.probs, window=win)
                if (probabilities or "uint8") == "uint8":
                    mask = np.where(band.classes == nodata, 0, 255).astype(np.uint8)
                    dst["probabilities"].write_mask(mask, window=win)
            if "uncertainty" in dst and band.uncertainty is not None:
                dst["uncertainty"].write(band.uncertainty, 1, window=win)
    with contextlib.ExitStack() as stack:
        # entered first, renamed last: the map appears only once every other output is in place
        final_map = stack.enter_context(atomic_path(out))
        finals = {name: stack.enter_context(atomic_path(p)) for name, p in extras.items()}
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True):
            _to_cog(raw["map"], final_map, "mode")
            if "probabilities" in finals:
                _to_cog(raw["probabilities"], finals["probabilities"], "average")
            if "uncertainty" in finals:
                _to_cog(raw["uncertainty"], finals["uncertainty"], "average", predictor="YES")
        if "polygons" in finals and vectorize_fn is not None:
            vec = parts.dir / f"polygons{extras['polygons'].suffix}"  # GDAL wants the format's extension
            # it reads the map a block of rows at a time: cap GDAL's cache by the width there too
            with rasterio.Env(
                GDAL_CACHEMAX=cachemax(
                    gdal_cache_mb(grid.width, np.dtype(class_dtype).itemsize, COG_CACHE_ROWS)
                )
            ):
                vectorize_fn(raw["map"], vec)
            os.replace(vec, finals["polygons"])
    parts.remove()
