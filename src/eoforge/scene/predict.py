"""Scene classifiers over a whole image: a label per window as a coarse raster and a GeoParquet of windows.

The image is cut into non-overlapping ``window x window`` pixel windows (edge windows that do not fit whole are
skipped: a scene label needs the full footprint). Each window is resampled to the model's chip size (bilinear),
standardised as in training and scored in batches, so memory is one batch of windows, never the image. The
coarse raster has one pixel per window (the image transform scaled by ``window``): the class index (uint8, 255
= no window) for single-label, or one 0/1 band per label for multi-label. The GeoParquet has one polygon per
window with a ``score_<class>`` column per class and the predicted label(s).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import torch
from rasterio.enums import Resampling
from rasterio.windows import Window
from shapely.geometry import box

from eoforge.errors import DataError, InputError
from eoforge.io.atomic import atomic_path
from eoforge.scene.fit import SceneModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScenePrediction:
    raster: Path
    windows: Path
    n_windows: int


@torch.no_grad()
def predict_windows(
    fitted: SceneModel,
    image: str | Path,
    out_raster: str | Path,
    out_parquet: str | Path,
    window: int,
    batch_size: int = 16,
) -> ScenePrediction:
    """Score every whole ``window``-pixel window of ``image``; write the coarse raster and the GeoParquet."""
    image = Path(image)
    if window < 1:
        raise InputError(f"window {window} must be a positive number of pixels")
    try:
        src = rasterio.open(image)
    except rasterio.errors.RasterioIOError as exc:
        raise DataError(f"{image}: unreadable raster ({exc})") from None
    with src:
        if src.count != len(fitted.mean):
            raise InputError(
                f"{image}: {src.count} bands, the model was trained on {len(fitted.mean)}; give the same bands"
            )
        rows, cols = src.height // window, src.width // window
        if rows == 0 or cols == 0:
            raise InputError(f"{image}: {src.height} x {src.width} px is smaller than one {window} px window")
        k = len(fitted.classes)
        multi = fitted.task.multilabel
        coarse = np.full((k if multi else 1, rows, cols), 0 if multi else 255, dtype=np.uint8)
        scores = np.zeros((rows * cols, k), dtype=np.float32)
        cells = [(r, c) for r in range(rows) for c in range(cols)]
        fitted.model.eval()
        for i in range(0, len(cells), batch_size):
            batch = cells[i : i + batch_size]
            x = np.stack(
                [
                    src.read(
                        window=Window(c * window, r * window, window, window),
                        out_shape=(src.count, fitted.size, fitted.size),
                        resampling=Resampling.bilinear,
                        masked=True,
                    )
                    .astype(np.float32)
                    .filled(np.nan)
                    for r, c in batch
                ]
            )
            z = (x - fitted.mean[None, :, None, None]) / fitted.std[None, :, None, None]
            t = torch.from_numpy(np.nan_to_num(z, nan=0.0).astype(np.float32))
            scores[i : i + len(batch)] = fitted.task.scores(fitted.model(t)).numpy()
        labels = fitted.task.decide(scores)
        for j, (r, c) in enumerate(cells):
            if multi:
                coarse[:, r, c] = labels[j]
            else:
                coarse[0, r, c] = labels[j]
        transform = src.transform * rasterio.Affine.scale(window)
        profile = {
            "driver": "GTiff",
            "width": cols,
            "height": rows,
            "count": coarse.shape[0],
            "dtype": "uint8",
            "crs": src.crs,
            "transform": transform,
            "nodata": None if multi else 255,
        }
        polys = [
            box(*rasterio.windows.bounds(Window(c * window, r * window, window, window), src.transform))
            for r, c in cells
        ]
        crs = src.crs
    with atomic_path(out_raster) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        dst.write(coarse)
        for b, name in enumerate(fitted.classes if multi else ["class"], start=1):
            dst.set_band_description(b, name)
    table: dict[str, object] = {"row": [r for r, _ in cells], "col": [c for _, c in cells]}
    for j, name in enumerate(fitted.classes):
        table[f"score_{name}"] = scores[:, j]
    table["label"] = (
        [";".join(n for n, on in zip(fitted.classes, lab, strict=True) if on) for lab in labels]
        if multi
        else [fitted.classes[int(v)] for v in labels]
    )
    gdf = gpd.GeoDataFrame(table, geometry=polys, crs=crs)
    with atomic_path(out_parquet) as tmp:
        gdf.to_parquet(tmp)
    log.info("%s: %d windows of %d px scored", image.name, len(cells), window)
    return ScenePrediction(Path(out_raster), Path(out_parquet), len(cells))
