"""Predict's memory is bounded by the scene width: GDAL's block cache is capped by width, never by height."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from rasterio.env import get_gdal_config

from eoforge.predict.engine import _prefetch
from eoforge.predict.outputs import MIN_CACHE_MB, gdal_cache_mb


@given(
    width=st.integers(1, 200_000),
    bpp=st.integers(1, 64),
    rows=st.integers(1, 4096),
)
def test_cache_holds_the_rows_and_grows_with_width_only(width: int, bpp: int, rows: int) -> None:
    mb = gdal_cache_mb(width, bpp, rows)
    assert mb >= MIN_CACHE_MB
    assert mb * 2**20 >= width * bpp * rows  # room for every requested row across the width
    assert mb * 2**20 < max(MIN_CACHE_MB * 2**20, width * bpp * rows) + 2**20  # and no more than a MiB over
    assert gdal_cache_mb(width + 1, bpp, rows) >= mb


def test_cache_of_a_wide_scene() -> None:
    # 16000 px wide, 4 float32 bands, a 256-px window row plus two 512-row source blocks: 1280 rows
    assert gdal_cache_mb(16000, 16, 1280) == 313
    assert gdal_cache_mb(4000, 16, 1280) == 79
    assert gdal_cache_mb(100, 16, 1280) == MIN_CACHE_MB


@pytest.mark.parametrize("bad", [(0, 4, 10), (10, 0, 10), (10, 4, -1)])
def test_cache_refuses_empty_sizes(bad: tuple[int, int, int]) -> None:
    with pytest.raises(ValueError, match="positive width"):
        gdal_cache_mb(*bad)


def test_reader_thread_runs_under_the_cache_cap() -> None:
    """The reader thread (where the source's blocks are read) sees the cap, not GDAL's default of 5 % of RAM."""

    def gen() -> Iterator[tuple[int, list[int], np.ndarray | None, np.ndarray | None]]:
        for k in range(3):
            yield k, [int(get_gdal_config("GDAL_CACHEMAX"))], np.zeros(1), None

    seen = [js[0] for _, js, _, _ in _prefetch(gen(), cache_mb=77)]
    assert seen == [77 * 2**20] * 3  # MiB, as bytes: rasterio hands integers to GDAL as bytes
