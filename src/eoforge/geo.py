"""The geography as small frozen value objects plus pure functions (after rasterio's ``windows.py``).

All tiling and stitching arithmetic lives here and is tested without opening a file.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

from affine import Affine
from rasterio.windows import Window


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS (as WKT or an authority string), affine transform and shape."""

    crs: str
    transform: Affine
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in CRS units."""
        x0, y0 = self.transform @ (0, 0)
        x1, y1 = self.transform @ (self.width, self.height)
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    def window_transform(self, window: Window) -> Affine:
        return self.transform @ Affine.translation(window.col_off, window.row_off)

    def window_bounds(self, window: Window) -> tuple[float, float, float, float]:
        t = self.window_transform(window)
        x0, y0 = t @ (0, 0)
        x1, y1 = t @ (window.width, window.height)
        return (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))

    def same_as(self, other: Grid, tol: float = 1e-6) -> bool:
        """Same shape and transform (to ``tol`` of a pixel); CRS compared by the caller."""
        if self.shape != other.shape:
            return False
        return bool(self.transform.almost_equals(other.transform, precision=tol * abs(self.transform.a)))


@dataclass(frozen=True)
class Tile:
    """One inference window and the part of it whose predictions are kept.

    ``read`` is the window read from the raster; ``core`` is the window written to the output; both are in
    raster pixel coordinates. ``core`` lies inside ``read``; the offset of ``core`` inside ``read`` is
    ``(core.row_off - read.row_off, core.col_off - read.col_off)``.
    """

    read: Window
    core: Window

    @property
    def core_slices(self) -> tuple[slice, slice]:
        """Slices that cut ``core`` out of an array holding ``read``."""
        r = int(self.core.row_off - self.read.row_off)
        c = int(self.core.col_off - self.read.col_off)
        return slice(r, r + int(self.core.height)), slice(c, c + int(self.core.width))


def _starts(length: int, size: int, stride: int) -> list[int]:
    """Window starts covering ``length`` with windows of ``size`` every ``stride``; the last is shifted back
    to end at ``length`` (edge shifting), so no window hangs outside and every pixel is covered."""
    if length <= size:
        return [0]
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def chip_windows(height: int, width: int, size: int, stride: int) -> list[Window]:
    """Training-chip windows of ``size`` every ``stride`` pixels, inside the raster only (no shifting)."""
    if size <= 0 or stride <= 0:
        raise ValueError("size and stride must be positive")
    return [
        Window(c, r, size, size)
        for r in range(0, height - size + 1, stride)
        for c in range(0, width - size + 1, stride)
    ]


def overlap_tiles(height: int, width: int, tile: int, overlap: int) -> Iterator[Tile]:
    """Tiles for sliding-window inference with ``overlap`` pixels shared between neighbouring windows.

    The kept cores partition the raster exactly (every pixel is written once, no blending needed): each core
    drops ``overlap // 2`` pixels of context on the sides that touch a neighbour, where predictions are
    weakest. Windows at the right and bottom edges are shifted back inside the raster. A raster smaller than
    ``tile`` gives one window of the raster's size.
    """
    if tile <= 0 or overlap < 0 or overlap >= tile:
        raise ValueError(f"need 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    th, tw = min(tile, height), min(tile, width)
    stride = tile - overlap
    rows = _starts(height, th, stride)
    cols = _starts(width, tw, stride)
    r_cuts = _cuts(rows, th, height)
    c_cuts = _cuts(cols, tw, width)
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            r0, r1 = r_cuts[i], r_cuts[i + 1]
            c0, c1 = c_cuts[j], c_cuts[j + 1]
            yield Tile(read=Window(c, r, tw, th), core=Window(c0, r0, c1 - c0, r1 - r0))


def _cuts(starts: list[int], size: int, length: int) -> list[int]:
    """Boundaries between the cores of consecutive windows: the middle of each pair's overlap."""
    cuts = [0]
    for a, b in pairwise(starts):
        cuts.append((b + a + size) // 2)
    cuts.append(length)
    return cuts


def block_index(window: Window, block_size: int) -> tuple[int, int] | None:
    """The (row, col) of the spatial block of ``block_size`` that holds ``window`` entirely, or ``None``
    when the window straddles a block boundary."""
    r0, c0 = int(window.row_off), int(window.col_off)
    r1, c1 = r0 + int(window.height) - 1, c0 + int(window.width) - 1
    br, bc = r0 // block_size, c0 // block_size
    if r1 // block_size != br or c1 // block_size != bc:
        return None
    return br, bc


def n_blocks(length: int, block_size: int) -> int:
    return math.ceil(length / block_size)
