"""Prepare's windows as Dask tasks: each task reads (aligns, warps, masks) one window of the recipe's source on
a worker; the results come back in window order to the process that writes the outputs, so the prepared files
are byte-identical to an in-process run whichever scheduler ran the reads.

Memory stays bounded by the window: at most ``ahead`` windows are read ahead of the writer (held by workers or
on their way back). A worker opens the source once per thread and keeps it for the next windows of the same
run (opening a recipe's files costs more than reading one window of them); :func:`forget` closes it after the
run.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.windows import Window

from eoforge.compute import worker_threads
from eoforge.geo import Grid
from eoforge.io.blockcache import cachemax
from eoforge.prepare.dates import DatedSource
from eoforge.prepare.recipe import Recipe, RecipeSource

if TYPE_CHECKING:
    from distributed import Client, Future

log = logging.getLogger(__name__)

GDAL_CACHE_MB = 256
"""GDAL's block cache for a worker's reads (as in-process prepare: bounded by the blocks, not 5 % of RAM)."""


@dataclass(frozen=True)
class SourceSpec:
    """What opens prepare's source again, in any process: the recipe, its files and the resolved grid."""

    recipe: Recipe
    images: Any
    dated: bool
    grid: Grid | None = None
    masks: tuple[tuple[str, Sequence[int], Sequence[int]], ...] = ()
    aoi: str | Path | Sequence[float] | None = None
    aoi_crs: str | None = None
    date_masks: tuple[tuple[str, tuple[tuple[str, Sequence[int], Sequence[int]], ...]], ...] = ()
    """Masks of one date only (time stacks): (date, masks) pairs."""

    def open(self) -> RecipeSource | DatedSource:
        kw: dict[str, Any] = dict(grid=self.grid, masks=self.masks, aoi=self.aoi, aoi_crs=self.aoi_crs)
        if self.dated:
            return DatedSource(self.recipe, self.images, date_masks=dict(self.date_masks), **kw)
        return RecipeSource(self.recipe, self.images, **kw)


_open_sources: dict[tuple[str, int], RecipeSource | DatedSource] = {}
_lock = threading.Lock()


def read_window(token: str, spec: SourceSpec, window: Window) -> np.ndarray:
    """One window of the source as float32 ``(C, h, w)``, NaN at nodata (a Dask task). The source is opened
    once per worker thread and run (``token``) and kept open for the run's next windows."""
    key = (token, threading.get_ident())
    with _lock:
        source = _open_sources.get(key)
    if source is None:
        source = spec.open()
        with _lock:
            _open_sources[key] = source
    with rasterio.Env(GDAL_CACHEMAX=cachemax(GDAL_CACHE_MB)):
        return source.read(window)


def forget(token: str) -> int:
    """Close the sources this process keeps open for the run ``token``; returns how many."""
    with _lock:
        keys = [k for k in _open_sources if k[0] == token]
        sources = [_open_sources.pop(k) for k in keys]
    for s in sources:
        s.close()
    return len(sources)


class WindowReads:
    """The source's ``windows`` read as Dask tasks on ``client``, at most ``ahead`` submitted ahead of the one
    being consumed (default: two per worker thread), yielded in window order. Use as a context manager: on
    exit, unread tasks are cancelled and the workers close the run's sources."""

    def __init__(
        self, client: Client, spec: SourceSpec, windows: Sequence[Window], ahead: int | None = None
    ) -> None:
        self.client = client
        self.spec = spec
        self.windows = list(windows)
        self.ahead = max(1, ahead if ahead is not None else 2 * worker_threads(client))
        self.token = uuid.uuid4().hex
        self._futures: deque[Future] = deque()
        self._next = 0
        self._spec_future: Any = None

    def __enter__(self) -> WindowReads:
        # the spec goes to the cluster once, not with every task
        self._spec_future = self.client.scatter(self.spec, broadcast=True, hash=False)
        log.info("prepare: %d windows as Dask tasks (%d ahead)", len(self.windows), self.ahead)
        return self

    def _submit(self) -> None:
        while self._next < len(self.windows) and len(self._futures) < self.ahead:
            w = self.windows[self._next]
            self._futures.append(
                self.client.submit(
                    read_window,
                    self.token,
                    self._spec_future,
                    w,
                    key=f"prepare-window-{self.token}-{self._next}",
                )
            )
            self._next += 1

    def __iter__(self) -> Iterator[np.ndarray]:
        self._submit()
        while self._futures:
            fut = self._futures.popleft()
            img = fut.result()
            fut.release()
            self._submit()
            yield img

    def __exit__(self, *exc: object) -> None:
        for f in self._futures:
            f.cancel()
        self._futures.clear()
        try:
            self.client.run(forget, self.token)
        except Exception as e:  # closing files on a worker that went away must not mask the result
            log.warning("prepare: could not close the workers' sources (%s)", e)
