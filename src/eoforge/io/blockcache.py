"""GDAL's raster block cache sized for what is being read, shared by the threads of one process.

GDAL keeps decoded raster blocks in one process-wide cache (default cap: 5 % of the RAM). Reading a scene that
fits in it then keeps every decoded tile until the datasets close, so each tile costs fresh memory (page faults,
kernel zeroing: ~20 % of a chips run's read CPU on a 4096² scene). A cap of a few rows of tiles makes GDAL
recycle the memory of the oldest blocks while still decoding each tile once when windows are read row by row.

Hand-written: the cap is process-wide (``GDALSetCacheMax64``) while ``rasterio.Env`` is per thread and restores
the value its own thread saw on exit, so threads that enter and leave ``Env(GDAL_CACHEMAX=...)`` at different
times can leave a wrong cap behind. Here every reader adds its need while it runs and the cap is the sum (at
least :data:`MIN_BYTES`); the last one out restores the value found before the first. Note that rasterio
passes an integer ``GDAL_CACHEMAX`` to GDAL as **bytes** (GDAL's own "< 100000 means MiB" rule applies only to
the config string), so MiB must be converted.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from rasterio.env import get_gdal_config, set_gdal_config

MIN_BYTES = 64 * 2**20
"""The least cap while readers are active (small scenes: as fast as an unbounded cache)."""

_lock = threading.Lock()
_needs: list[int] = []
_saved: list[int | None] = []


def tile_rows_bytes(width: int, bytes_per_pixel: int, tile_height: int, rows: int) -> int:
    """Bytes of ``rows`` rows of tiles ``tile_height`` px high across a raster ``width`` px wide, at
    ``bytes_per_pixel`` over all its bands."""
    if min(width, bytes_per_pixel, tile_height, rows) <= 0:
        raise ValueError(
            f"need positive width, bytes per pixel, tile height and rows, got {width}, {bytes_per_pixel}, "
            f"{tile_height}, {rows}"
        )
    return width * bytes_per_pixel * tile_height * rows


def cachemax(mib: int) -> int:
    """The value to give ``rasterio.Env(GDAL_CACHEMAX=...)`` for a cap of ``mib`` MiB: rasterio hands an integer
    to ``GDALSetCacheMax64`` as bytes, so ``Env(GDAL_CACHEMAX=256)`` would cap the cache at 256 bytes."""
    if mib <= 0:
        raise ValueError(f"GDAL cache cap must be positive, got {mib} MiB")
    return mib * 2**20


def current_cap() -> int:
    """GDAL's block-cache cap now, in bytes."""
    return int(get_gdal_config("GDAL_CACHEMAX"))


@contextlib.contextmanager
def block_cache(nbytes: int) -> Iterator[None]:
    """While inside, GDAL's block cache is capped at the sum of the ``nbytes`` of every reader inside (this
    thread's and others'), at least :data:`MIN_BYTES`; the cap found before the first reader is restored
    after the last one leaves."""
    if nbytes <= 0:
        raise ValueError(f"block cache need must be positive, got {nbytes}")
    with _lock:
        if not _needs:
            _saved[:] = [current_cap()]
        _needs.append(nbytes)
        set_gdal_config("GDAL_CACHEMAX", max(MIN_BYTES, sum(_needs)))
    try:
        yield
    finally:
        with _lock:
            _needs.remove(nbytes)
            if _needs:
                set_gdal_config("GDAL_CACHEMAX", max(MIN_BYTES, sum(_needs)))
            else:
                set_gdal_config("GDAL_CACHEMAX", _saved[0])
