"""Streaming normalisation statistics over valid pixels, block by block.

zscore: mean and standard deviation merged exactly across blocks (Chan et al. pairwise update in float64, so
the result equals a one-shot computation up to rounding). minmax: exact minimum and maximum. percentile: a
second pass over the written stack fills a fixed 4096-bin histogram per band between its minimum and maximum;
a percentile is interpolated inside its bin, so its error is at most one bin width, (max - min) / 4096, stored
as ``percentile_accuracy``. The normalisation is stored as an offset and a scale per channel (``(x - offset) /
scale``: mean/std, min/(max - min), p_low/(p_high - p_low)); percentile stretches are not clamped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio

from eoforge.geo import Grid
from eoforge.io.rasters import block_windows

BINS = 4096


class BandStats:
    """Per-band count, mean, M2 (sum of squared deviations), min and max, updated block by block."""

    def __init__(self, bands: int) -> None:
        self.n = np.zeros(bands, dtype=np.int64)
        self.mean = np.zeros(bands)
        self.m2 = np.zeros(bands)
        self.min = np.full(bands, np.inf)
        self.max = np.full(bands, -np.inf)

    def update(self, values: np.ndarray) -> None:
        """``values`` (C, N): pixels of one block; NaN entries (a band nodata at a valid pixel) are skipped."""
        v = values.astype(np.float64)
        ok = ~np.isnan(v)
        if ok.all():  # the common case: no band gap, plain reductions
            nb = np.full(v.shape[0], v.shape[1], dtype=np.int64)
            if not v.shape[1]:
                return
            bmean = v.mean(axis=1)
            bm2 = ((v - bmean[:, None]) ** 2).sum(axis=1)
            bmin, bmax = v.min(axis=1), v.max(axis=1)
        else:
            nb = ok.sum(axis=1)
            if not nb.any():
                return
            v0 = np.where(ok, v, 0.0)
            bmean = v0.sum(axis=1) / np.maximum(nb, 1)
            bm2 = (np.where(ok, v - bmean[:, None], 0.0) ** 2).sum(axis=1)
            bmin = np.where(ok, v, np.inf).min(axis=1)
            bmax = np.where(ok, v, -np.inf).max(axis=1)
        n = self.n + nb
        delta = bmean - self.mean
        safe = np.maximum(n, 1)
        self.mean = self.mean + delta * nb / safe
        self.m2 = self.m2 + bm2 + delta**2 * self.n * nb / safe
        self.n = n
        self.min = np.minimum(self.min, bmin)
        self.max = np.maximum(self.max, bmax)

    def merge(self, other: BandStats) -> None:
        """Add another set of pixels' statistics (Chan et al. pairwise merge: as if updated with them)."""
        n = self.n + other.n
        delta = other.mean - self.mean
        safe = np.maximum(n, 1)
        self.mean = self.mean + delta * other.n / safe
        self.m2 = self.m2 + other.m2 + delta**2 * self.n * other.n / safe
        self.n = n
        self.min = np.minimum(self.min, other.min)
        self.max = np.maximum(self.max, other.max)

    def to_json(self) -> dict[str, list[float]]:
        return {k: [float(x) for x in getattr(self, k)] for k in ("n", "mean", "m2", "min", "max")}

    @classmethod
    def from_json(cls, d: dict[str, list[float]]) -> BandStats:
        out = cls(len(d["n"]))
        out.n = np.asarray(d["n"], dtype=np.int64)
        for k in ("mean", "m2", "min", "max"):
            setattr(out, k, np.asarray(d[k], dtype=np.float64))
        return out

    @property
    def std(self) -> np.ndarray:
        out: np.ndarray = np.sqrt(self.m2 / np.maximum(self.n, 1))
        return out


@dataclass(frozen=True)
class Normalisation:
    offset: list[float]
    scale: list[float]
    mode: str
    percentile_accuracy: list[float] | None = None


def _nonzero(scale: np.ndarray) -> np.ndarray:
    return np.where(scale > 0, scale, 1.0)


def percentiles(
    images: list[tuple[str, Grid]], lo: np.ndarray, hi: np.ndarray, q: tuple[float, float], block: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentiles ``q`` of every band over the stacks ``(path, grid)`` (one histogram pass over all of them);
    returns (low, high, bin)."""
    bands = len(lo)
    hist = np.zeros((bands, BINS), dtype=np.int64)
    width = np.maximum(hi - lo, 1e-12) / BINS
    for path, grid in images:
        with rasterio.open(path) as src:
            for win in block_windows(grid, block):
                img = src.read(window=win)
                for b in range(bands):
                    v = img[b][~np.isnan(img[b])].astype(np.float64)
                    if v.size:
                        k = np.clip(((v - lo[b]) / width[b]).astype(np.int64), 0, BINS - 1)
                        hist[b] += np.bincount(k, minlength=BINS)
    out = np.zeros((2, bands))
    for b in range(bands):
        cdf = np.cumsum(hist[b])
        total = cdf[-1]
        for j, pct in enumerate(q):
            target = pct / 100 * total
            k = int(np.searchsorted(cdf, target, side="left"))
            k = min(k, BINS - 1)
            before = cdf[k - 1] if k > 0 else 0
            frac = (target - before) / hist[b, k] if hist[b, k] else 0.0
            out[j, b] = lo[b] + (k + frac) * width[b]
    return out[0], out[1], width


def normalisation(
    stats: BandStats, mode: str, images: list[tuple[str, Grid]], clip: tuple[float, float], block: int = 512
) -> Normalisation:
    """The normalisation of ``mode`` from ``stats`` of the valid pixels of the stacks ``images``."""
    if mode == "zscore":
        return Normalisation(stats.mean.tolist(), _nonzero(stats.std).tolist(), mode)
    if mode == "minmax":
        return Normalisation(stats.min.tolist(), _nonzero(stats.max - stats.min).tolist(), mode)
    plo, phi, width = percentiles(images, stats.min, stats.max, clip, block)
    return Normalisation(plo.tolist(), _nonzero(phi - plo).tolist(), mode, width.tolist())
