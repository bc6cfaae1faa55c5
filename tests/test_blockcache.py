"""GDAL's block-cache cap while chips tasks read: the sum of the readers' needs, restored after the last."""

from __future__ import annotations

import threading

import pytest

from eoforge.io.blockcache import MIN_BYTES, block_cache, current_cap, tile_rows_bytes


def test_tile_rows_bytes() -> None:
    assert tile_rows_bytes(4096, 25, 256, 2) == 4096 * 25 * 256 * 2
    with pytest.raises(ValueError, match="positive"):
        tile_rows_bytes(0, 25, 256, 2)


def test_cap_is_the_sum_of_active_needs_and_is_restored() -> None:
    before = current_cap()
    big = 3 * MIN_BYTES
    with block_cache(1):
        assert current_cap() == MIN_BYTES  # never below the floor
        with block_cache(big):
            assert current_cap() == big + 1
        assert current_cap() == MIN_BYTES
    assert current_cap() == before
    with pytest.raises(ValueError, match="positive"), block_cache(0):
        pass
    assert current_cap() == before


def test_threads_entering_and_leaving_out_of_order_restore_the_cap() -> None:
    """rasterio.Env(GDAL_CACHEMAX=...) per thread would restore the value each thread saw on entry; here the
    first reader in (A) leaves before the last (B) and the original cap still comes back."""
    before = current_cap()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def a() -> None:
        with block_cache(2 * MIN_BYTES):
            a_in.set()
            b_in.wait(5)
            seen["both"] = current_cap()
        a_out.set()

    def b() -> None:
        a_in.wait(5)
        with block_cache(MIN_BYTES):
            b_in.set()
            a_out.wait(5)
            seen["b alone"] = current_cap()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == {"both": 3 * MIN_BYTES, "b alone": MIN_BYTES}
    assert current_cap() == before


def test_cachemax_converts_mib_to_the_bytes_rasterio_passes_on() -> None:
    import rasterio
    from rasterio.env import get_gdal_config

    from eoforge.io.blockcache import cachemax

    with rasterio.Env(GDAL_CACHEMAX=cachemax(3)):
        assert int(get_gdal_config("GDAL_CACHEMAX")) == 3 * 2**20  # not 3 bytes
    with pytest.raises(ValueError, match="must be positive"):
        cachemax(0)
