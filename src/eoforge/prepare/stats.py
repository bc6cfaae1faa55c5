"""Streaming normalisation statistics over valid pixels, block by block.

zscore: mean and standard deviation merged exactly across blocks (Chan et al. pairwise update in float64, so
the result equals a one-shot computation up to rounding). minmax: exact minimum and maximum. percentile: a
second pass over the written stack fills a fixed 4096-bin histogram per band between its exact minimum and
maximum (:class:`Histogram`); a percentile q is the bin holding the sample of rank ceil(q/100 * n), linearly
interpolated inside that bin. It is therefore within one bin width, (max - min) / 4096, of the exact
inverted-CDF percentile (``numpy.percentile(v, q, method="inverted_cdf")``); numpy's default (linear between the
two neighbouring ranks) differs from that by at most the gap between those two sorted values. The bin width is
stored per band as ``percentile_accuracy`` in ``scene.json``. The normalisation is stored as an offset and a
scale per channel (``(x - offset) / scale``: mean/std, min/(max - min), p_low/(p_high - p_low)); percentile
stretches are clipped to [0, 1] where the model inputs are normalised (:mod:`eoforge.normalise`).
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
        if not values.shape[1]:
            return
        ok = ~np.isnan(values)
        v = values.astype(np.float64)
        if ok.all():  # the common case: no band gap, plain reductions (one float64 copy, squared in place)
            nb = np.full(v.shape[0], v.shape[1], dtype=np.int64)
            bmean = v.mean(axis=1)
            v -= bmean[:, None]
            np.square(v, out=v)
            bm2 = v.sum(axis=1)
            bmin = values.min(axis=1).astype(np.float64)
            bmax = values.max(axis=1).astype(np.float64)
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


class Histogram:
    """Fixed-bin histograms of ``bands`` channels between known bounds, filled block by block (memory: bins only).

    Hand-written rather than a sketch library (t-digest, KLL): with the exact min/max known from the first pass,
    a fixed histogram gives a stated, data-independent error bound in one cheap ``bincount`` per band and block.
    """

    def __init__(self, lo: np.ndarray, hi: np.ndarray, bins: int = BINS) -> None:
        self.lo = np.asarray(lo, dtype=np.float64)
        self.bins = bins
        self.width = np.maximum(np.asarray(hi, dtype=np.float64) - self.lo, 1e-12) / bins
        self.counts = np.zeros((len(self.lo), bins), dtype=np.int64)

    def update(self, values: np.ndarray) -> None:
        """``values`` ``(C, ...)``; NaN entries are skipped."""
        for b in range(len(self.lo)):
            v = values[b].ravel()
            v = v[~np.isnan(v)].astype(np.float64)
            if v.size:
                k = np.clip(((v - self.lo[b]) / self.width[b]).astype(np.int64), 0, self.bins - 1)
                self.counts[b] += np.bincount(k, minlength=self.bins)

    def quantiles(self, q: tuple[float, ...]) -> np.ndarray:
        """Percentiles ``q`` (0..100) per band, ``(len(q), C)``; within one bin width of the exact inverted-CDF
        percentile (see the module doc)."""
        out = np.zeros((len(q), len(self.lo)))
        for b in range(len(self.lo)):
            cdf = np.cumsum(self.counts[b])
            total = cdf[-1]
            for j, pct in enumerate(q):
                target = max(np.ceil(pct / 100 * total), 1)  # the rank of the inverted-CDF sample
                k = min(int(np.searchsorted(cdf, target, side="left")), self.bins - 1)
                before = cdf[k - 1] if k > 0 else 0
                frac = (target - before) / self.counts[b, k] if self.counts[b, k] else 0.0
                out[j, b] = self.lo[b] + (k + frac) * self.width[b]
        return out


def percentiles(
    images: list[tuple[str, Grid]], lo: np.ndarray, hi: np.ndarray, q: tuple[float, float], block: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentiles ``q`` of every band over the stacks ``(path, grid)`` (one histogram pass over all of them);
    returns (low, high, bin)."""
    hist = Histogram(lo, hi)
    for path, grid in images:
        with rasterio.open(path) as src:
            for win in block_windows(grid, block):
                hist.update(src.read(window=win))
    out = hist.quantiles(q)
    return out[0], out[1], hist.width


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
