"""Stage 5, predict: streaming sliding-window inference over a whole scene into a class-map COG.

Windows come from :func:`eoforge.geo.overlap_tiles`: neighbours share ``overlap`` pixels and each window keeps
only its core, so the cores partition the scene and every output pixel is written once. A reader thread
fills the next batch while the model runs; memory is bounded by the batch of windows, never by the scene.
The map is written to a temporary tiled GeoTIFF, copied to a Cloud-Optimized GeoTIFF and renamed into place.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil

from eoforge.errors import PackageError
from eoforge.geo import Grid, Tile, overlap_tiles
from eoforge.io.atomic import atomic_path
from eoforge.io.rasters import RasterStack, check_band_names, valid_mask
from eoforge.package import Predictor, load_package
from eoforge.prepare.recipe import RecipeSource, open_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictResult:
    path: Path
    grid: Grid
    windows: int
    seconds: float

    @property
    def pixels_per_second(self) -> float:
        return self.grid.height * self.grid.width / max(self.seconds, 1e-9)


def _pad_to(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad ``(C, h0, w0)`` with NaN at the bottom/right to ``(C, h, w)``."""
    if a.shape[-2:] == (h, w):
        return a
    out = np.full((a.shape[0], h, w), np.nan, dtype=np.float32)
    out[:, : a.shape[1], : a.shape[2]] = a
    return out


def _batches(
    stack: RasterStack | RecipeSource, tiles: list[Tile], batch_size: int, h: int, w: int
) -> Iterator[tuple[list[Tile], np.ndarray]]:
    for i in range(0, len(tiles), batch_size):
        chunk = tiles[i : i + batch_size]
        yield chunk, np.stack([_pad_to(stack.read(t.read), h, w) for t in chunk])


def _prefetch(
    gen: Iterator[tuple[list[Tile], np.ndarray]], depth: int = 2
) -> Iterator[tuple[list[Tile], np.ndarray]]:
    """Run ``gen`` in a reader thread, ``depth`` batches ahead of the consumer."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(done)
        except BaseException as exc:
            q.put(exc)

    th = threading.Thread(target=work, name="eoforge-reader", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        th.join(timeout=5)


def output_dtype(class_ids: Sequence[int]) -> tuple[str, int]:
    """Smallest unsigned dtype holding the class ids, and its nodata value (the dtype's maximum)."""
    if max(class_ids) < 255:
        return "uint8", 255
    return "uint16", 65535


def predict_scene(
    predictor: Predictor,
    images: Sequence[str | Path],
    out: str | Path,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
    ignore_band_names: bool = False,
) -> PredictResult:
    """Classify every pixel of the stacked ``images`` and write a class-id COG to ``out``."""
    meta = predictor.meta
    tile = tile or meta.tile
    overlap = meta.overlap if overlap is None else overlap
    if tile % 32:
        raise PackageError(f"predict tile {tile} must be a multiple of 32 (the U-Net downsamples 5 times)")
    if overlap >= tile:
        raise PackageError(f"predict overlap {overlap} must be smaller than the tile {tile}")
    out = Path(out)
    t0 = time.perf_counter()
    with open_source(meta, images) as stack:
        check_band_names(stack.described_names, meta.source_band_names, ignore_band_names)
        if stack.count != len(meta.bands):
            raise PackageError(
                f"{stack.paths[0]}: the image stack has {stack.count} bands but the model was trained on "
                f"{len(meta.bands)} ({', '.join(meta.bands)}); give the same bands in the same order"
            )
        grid = stack.grid
        tiles = list(overlap_tiles(grid.height, grid.width, tile, overlap))
        th, tw = int(tiles[0].read.height), int(tiles[0].read.width)
        ph, pw = -(-th // 32) * 32, -(-tw // 32) * 32
        dtype, nodata = output_dtype(predictor.class_ids)
        lut = np.array(predictor.class_ids, dtype=dtype)
        profile = {
            "driver": "GTiff",
            "width": grid.width,
            "height": grid.height,
            "count": 1,
            "dtype": dtype,
            "nodata": nodata,
            "crs": grid.crs,
            "transform": grid.transform,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
        }
        with rasterio.Env(GDAL_CACHEMAX=256), atomic_path(out) as final_tmp:
            raw_tmp = final_tmp.with_name(final_tmp.name + ".raw.tif")
            try:
                with rasterio.open(raw_tmp, "w", **profile) as dst:
                    if dtype == "uint8":
                        dst.write_colormap(1, _colormap(predictor))
                    done = 0
                    for chunk, batch in _prefetch(_batches(stack, tiles, batch_size, ph, pw)):
                        invalid = ~valid_mask(batch)
                        classes = lut[predictor.predict_index(batch)]
                        classes[invalid] = nodata
                        for k, t in enumerate(chunk):
                            rs, cs = t.core_slices
                            dst.write(classes[k][rs, cs], 1, window=t.core)
                        done += len(chunk)
                        if on_progress is not None:
                            on_progress(done, len(tiles))
                rasterio.shutil.copy(
                    raw_tmp,
                    final_tmp,
                    driver="COG",
                    compress="DEFLATE",
                    blocksize=256,
                    overview_resampling="mode",
                    num_threads=os.cpu_count() or 1,
                )
            finally:
                if raw_tmp.exists():
                    raw_tmp.unlink()
    secs = time.perf_counter() - t0
    log.info(
        "predicted %dx%d px in %.1f s (%.0f px/s)",
        grid.width,
        grid.height,
        secs,
        grid.width * grid.height / secs,
    )
    return PredictResult(path=out, grid=grid, windows=len(tiles), seconds=secs)


def _colormap(predictor: Predictor) -> dict[int, tuple[int, int, int, int]]:
    cmap = {}
    for c in predictor.meta.classes:
        h = c.color.lstrip("#")
        cmap[c.id] = (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 255)
    return cmap


def predict(
    model_dir: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    precision: str = "fp32",
    ignore_band_names: bool = False,
) -> PredictResult:
    """Load a model package and classify a scene: ``eoforge predict MODEL_DIR IMAGE... -o OUT.tif``."""
    predictor = load_package(model_dir, device=device, precision=precision)
    return predict_scene(
        predictor, images, out, tile, overlap, batch_size, on_progress, ignore_band_names=ignore_band_names
    )
