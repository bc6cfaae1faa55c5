"""What the model is compared with, each scored on exactly the same test pixels as the delivered map.

Every scorer answers one question: given a window of the scene and the mask of its scored pixels, which class
index does it give each of them? The model itself is scored through the map that `predict` wrote
(:class:`MapScorer`), so the numbers describe the file users get. Baselines: the majority class of the
training pixels, a per-pixel random forest trained on the training chips, any class-map raster (another tool,
an earlier run) and simple spectral-index rules (through ``spyndex``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import zarr
from rasterio.windows import Window

from eoforge.chips.store import iter_chips
from eoforge.config import IGNORE_INDEX, IndexRule, class_index
from eoforge.errors import InputError
from eoforge.geo import Grid
from eoforge.io.rasters import nearest_on_grid, open_raster, valid_mask

log = logging.getLogger(__name__)


class Scorer(Protocol):
    name: str
    kind: str

    def predict(self, window: Window, mask: np.ndarray, pixels: np.ndarray | None) -> np.ndarray:
        """Class indices (0..K-1, or K for 'no prediction') of the ``mask`` pixels of ``window``.

        ``pixels`` holds the image values of those pixels ``(n, bands)`` (NaN at nodata) when the scorer
        declared ``needs_pixels``.
        """
        ...

    @property
    def needs_pixels(self) -> bool: ...


def id_lut(class_ids: list[int]) -> np.ndarray:
    """Lookup table raster value -> class index; values that are not class ids map to K (no prediction)."""
    k = len(class_ids)
    lut = np.full(65536, k, dtype=np.int64)
    lut[np.asarray(class_ids)] = np.arange(k)
    return lut


class MapScorer:
    """A class-map raster of class ids, warped onto the scene grid (nearest) when its grid differs."""

    kind = "map"
    needs_pixels = False

    def __init__(self, path: str | Path, grid: Grid, class_ids: list[int], name: str | None = None) -> None:
        self.path = Path(path)
        self.name = name or self.path.name
        self._src = open_raster(self.path)
        if self._src.crs is None:
            self._src.close()
            raise InputError(f"{self.path}: the map has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
        kind = self._src.dtypes[0]
        if np.dtype(kind).kind not in "ui" or np.dtype(kind).itemsize > 2:
            self._src.close()
            raise InputError(
                f"{self.path}: a class map must hold integer class ids (uint8/uint16/int16), not {kind}; "
                "give a class-map raster"
            )
        self._reader: Any = nearest_on_grid(self._src, grid, "map")
        self._lut = id_lut(class_ids)
        self._k = len(class_ids)
        self._nodata = self._src.nodata

    def predict(self, window: Window, mask: np.ndarray, pixels: np.ndarray | None) -> np.ndarray:
        raw = self._reader.read(1, window=window, masked=True)
        vals = np.asarray(raw.filled(0)).astype(np.int64)[mask]
        out = self._lut[np.clip(vals, 0, 65535)]
        bad = np.ma.getmaskarray(raw)[mask] | (vals < 0) | (vals > 65535)
        out[bad] = self._k
        return out

    def close(self) -> None:
        if self._reader is not self._src:
            self._reader.close()
        self._src.close()


@dataclass
class MajorityScorer:
    """Predicts the most frequent class of the training pixels everywhere."""

    index: int
    class_name: str
    kind: str = "majority"
    needs_pixels: bool = False
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.name = f"majority class ({self.class_name})"

    def predict(self, window: Window, mask: np.ndarray, pixels: np.ndarray | None) -> np.ndarray:
        return np.full(int(mask.sum()), self.index, dtype=np.int64)


class ForestScorer:
    """A per-pixel random forest (scikit-learn) on the band values of pixels from the training chips.

    scikit-learn's forests accept NaN, so a pixel with one band at nodata is still classified.
    """

    kind = "random_forest"
    needs_pixels = True
    name = "random forest"

    def __init__(self, x: np.ndarray, y: np.ndarray, seed: int = 0) -> None:
        from sklearn.ensemble import RandomForestClassifier

        self.classes_ = np.unique(y)
        self.model_ = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=seed).fit(x, y)
        log.info("random forest baseline trained on %d pixels", len(y))

    def predict(self, window: Window, mask: np.ndarray, pixels: np.ndarray | None) -> np.ndarray:
        if pixels is None or len(pixels) == 0:
            return np.zeros(0, dtype=np.int64)
        return np.asarray(self.model_.predict(pixels), dtype=np.int64)


class IndexRuleScorer:
    """``index > above -> then, else -> otherwise``, the index computed by spyndex from named bands."""

    kind = "index_rule"
    needs_pixels = True

    def __init__(self, rule: IndexRule, bands: list[str], classes: dict[int, str]) -> None:
        import spyndex

        self.rule = rule
        self.name = rule.name or f"{rule.index} > {rule.above:g}"
        by_common = {
            b.common_name: sym for sym, b in spyndex.bands.items() if getattr(b, "common_name", None)
        }
        needed = list(spyndex.indices[rule.index].bands)
        self._columns: dict[str, int] = {}
        self._constants: dict[str, float] = {}
        names = [b.lower() for b in bands]
        for sym in needed:
            if sym in spyndex.constants:
                self._constants[sym] = float(spyndex.constants[sym].default)
                continue
            common = next((c for c, s in by_common.items() if s == sym), sym)
            if common in names:
                self._columns[sym] = names.index(common)
            elif sym.lower() in names:
                self._columns[sym] = names.index(sym.lower())
            else:
                raise InputError(
                    f"evaluate.baselines {rule.index}: needs the '{common}' band, but the bands are "
                    f"{', '.join(bands)}; name the bands with STAC common names in inputs.bands"
                )
        then, other = class_index(classes, rule.then), class_index(classes, rule.otherwise)
        if then is None or other is None:  # validated with the config; kept for direct API use
            raise InputError(f"evaluate.baselines {rule.index}: then/else must be classes of inputs.classes")
        self._then, self._else = then, other

    def values(self, pixels: np.ndarray) -> np.ndarray:
        import spyndex

        params: dict[str, Any] = {s: pixels[:, c].astype(np.float64) for s, c in self._columns.items()}
        params.update(self._constants)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.asarray(spyndex.computeIndex(self.rule.index, params), dtype=np.float64)

    def predict(self, window: Window, mask: np.ndarray, pixels: np.ndarray | None) -> np.ndarray:
        if pixels is None or len(pixels) == 0:
            return np.zeros(0, dtype=np.int64)
        v = self.values(pixels)
        return np.where(v > self.rule.above, self._then, self._else).astype(np.int64)


def training_pixels(
    images: zarr.Array, labels: zarr.Array, chips: list[int], max_pixels: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """A random sample of labelled pixels (band values, class index) from the given training chips (a Zarr
    chip store's ``image`` and ``label`` arrays)."""
    rng = np.random.default_rng(seed)
    per_chip = max(1, max_pixels // max(len(chips), 1))
    xs, ys = [], []
    for _, img, lab in iter_chips(images, labels, chips):  # chunk by chunk, ascending chip order
        ok = (lab != IGNORE_INDEX) & valid_mask(img)
        sel = np.flatnonzero(ok)
        if len(sel) > per_chip:
            sel = rng.choice(sel, per_chip, replace=False)
        xs.append(img.reshape(img.shape[0], -1)[:, sel].T)
        ys.append(lab.reshape(-1)[sel])
    if not xs:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys).astype(np.int64)
