from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.windows import Window

from eoforge.geo import Grid, block_index, chip_windows, overlap_tiles


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"),
    [
        (100, 70, 32, 8),
        (64, 64, 64, 0),
        (20, 300, 64, 16),
        (257, 129, 128, 32),
        (31, 31, 64, 32),
        (500, 500, 96, 31),
    ],
)
def test_overlap_tile_cores_partition_the_raster(h: int, w: int, tile: int, overlap: int) -> None:
    cover = np.zeros((h, w), dtype=int)
    tiles = list(overlap_tiles(h, w, tile, overlap))
    for t in tiles:
        r, c = int(t.read.row_off), int(t.read.col_off)
        assert r >= 0 and c >= 0 and r + t.read.height <= h and c + t.read.width <= w  # inside the raster
        assert (t.read.height, t.read.width) == (min(tile, h), min(tile, w))  # all the same size
        rs, cs = t.core_slices
        assert rs.start >= 0 and rs.stop <= t.read.height and cs.start >= 0 and cs.stop <= t.read.width
        cover[
            int(t.core.row_off) : int(t.core.row_off + t.core.height),
            int(t.core.col_off) : int(t.core.col_off + t.core.width),
        ] += 1
    assert cover.min() == 1 and cover.max() == 1


def test_overlap_tiles_keep_context_away_from_inner_edges() -> None:
    tiles = list(overlap_tiles(1000, 1000, 256, 64))
    for t in tiles:
        rs, cs = t.core_slices
        # an inner core edge lies at least overlap/2 from the window edge
        if t.core.row_off > 0:
            assert rs.start >= 32
        if t.core.col_off + t.core.width < 1000:
            assert t.read.width - cs.stop >= 32


def test_overlap_tiles_reject_bad_overlap() -> None:
    with pytest.raises(ValueError, match="overlap < tile"):
        list(overlap_tiles(100, 100, 32, 32))


def test_chip_windows_stay_inside() -> None:
    wins = chip_windows(100, 70, 32, 16)
    assert len(wins) == len(range(0, 69, 16)) * len(range(0, 39, 16))
    assert all(w.row_off + 32 <= 100 and w.col_off + 32 <= 70 for w in wins)


def test_block_index() -> None:
    assert block_index(Window(0, 0, 32, 32), 64) == (0, 0)
    assert block_index(Window(64, 32, 32, 32), 64) == (0, 1)
    assert block_index(Window(48, 0, 32, 32), 64) is None


def test_grid_bounds_and_window_transform() -> None:
    g = Grid("EPSG:32633", Affine(10, 0, 1000, 0, -10, 5000), 20, 30)
    assert g.bounds == (1000, 4800, 1300, 5000)
    assert g.window_transform(Window(5, 2, 4, 4)) @ (0, 0) == (1050, 4980)
    assert g.window_bounds(Window(5, 2, 4, 4)) == (1050, 4940, 1090, 4980)
    assert g.same_as(Grid("EPSG:32633", Affine(10, 0, 1000, 0, -10, 5000), 20, 30))
    assert not g.same_as(Grid("EPSG:32633", Affine(10, 0, 1010, 0, -10, 5000), 20, 30))
