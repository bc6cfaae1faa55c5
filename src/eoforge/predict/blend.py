"""Window weights for stitching overlapping predictions, and the plan of row bands the engine streams.

The weights are separable: a window's 2-D weight is the outer product of a row weight and a column weight, and
the windows form a grid (same row starts for every column), so normalising each axis on its own makes the 2-D
weights of all windows covering a pixel sum to one. ``center`` gives weight 1 on the window's kept core and 0
elsewhere (the cores partition the scene, :func:`eoforge.geo.overlap_tiles`); ``hann`` and ``triangular`` taper
towards the window borders and are strictly positive, so a pixel covered by a single window (scene edges) keeps
weight one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eoforge.geo import _cuts, _starts

BLENDS = ("center", "hann", "triangular")


def taper(size: int, mode: str) -> np.ndarray:
    """Un-normalised 1-D taper of ``size`` samples, sampled at pixel centres (so never exactly zero)."""
    x = (np.arange(size, dtype=np.float64) + 0.5) / size
    if mode == "hann":
        return np.sin(np.pi * x) ** 2
    if mode == "triangular":
        return 1.0 - np.abs(2.0 * x - 1.0)
    raise ValueError(f"unknown taper '{mode}'; choose one of: {', '.join(BLENDS[1:])}")


def axis_weights(starts: list[int], size: int, length: int, mode: str) -> list[np.ndarray]:
    """Normalised weights (float32, ``size`` each) of the windows starting at ``starts`` along one axis.

    For every position in ``[0, length)`` the weights of the windows covering it sum to one.
    """
    if mode == "center":
        cuts = _cuts(starts, size, length)
        out = []
        for i, s in enumerate(starts):
            w = np.zeros(size, np.float32)
            w[cuts[i] - s : cuts[i + 1] - s] = 1.0
            out.append(w)
        return out
    t = taper(size, mode)
    total = np.zeros(length, np.float64)
    for s in starts:
        total[s : s + size] += t
    return [(t / total[s : s + size]).astype(np.float32) for s in starts]


@dataclass(frozen=True)
class BandPlan:
    """Windows on a grid of ``rows`` x ``cols`` starts, and the row bands the output is streamed in.

    Band ``k`` covers output rows ``[bounds[k], bounds[k + 1])`` and is complete once window row ``k`` has run:
    no later window row has weight on it. ``extent[k]`` is the row range where window row ``k`` has weight.
    """

    height: int
    width: int
    th: int
    tw: int
    rows: list[int]
    cols: list[int]
    bounds: list[int]
    extent: list[tuple[int, int]]
    row_weights: list[np.ndarray]
    col_weights: list[np.ndarray]
    col_extent: list[tuple[int, int]]

    @property
    def n_bands(self) -> int:
        return len(self.rows)

    def first_window_row(self, band: int) -> int:
        """The first window row with weight on band ``band`` (where a run starting at that band replays from)."""
        lo = self.bounds[band]
        return next(k for k, (_, hi) in enumerate(self.extent) if hi > lo)


def plan_bands(height: int, width: int, tile: int, overlap: int, mode: str) -> BandPlan:
    """The windows (as :func:`eoforge.geo.overlap_tiles`) and row bands for ``mode``."""
    if mode not in BLENDS:
        raise ValueError(f"unknown blend '{mode}'; choose one of: {', '.join(BLENDS)}")
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    th, tw = min(tile, height), min(tile, width)
    rows = _starts(height, th, tile - overlap)
    cols = _starts(width, tw, tile - overlap)
    rw = axis_weights(rows, th, height, mode)
    cw = axis_weights(cols, tw, width, mode)

    def extent(starts: list[int], ws: list[np.ndarray]) -> list[tuple[int, int]]:
        out = []
        for s, w in zip(starts, ws, strict=True):
            nz = np.flatnonzero(w)
            out.append((s + int(nz[0]), s + int(nz[-1]) + 1))
        return out

    bounds = _cuts(rows, th, height) if mode == "center" else [*rows, height]
    return BandPlan(
        height=height,
        width=width,
        th=th,
        tw=tw,
        rows=rows,
        cols=cols,
        bounds=bounds,
        extent=extent(rows, rw),
        row_weights=rw,
        col_weights=cw,
        col_extent=extent(cols, cw),
    )
