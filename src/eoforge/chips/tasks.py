"""The chips stage's Dask tasks (one per batch of chips) and how they run: in this process by default, on a
``dask.distributed`` cluster when :func:`eoforge.compute.dask_client` gives a client.

Tasks take paths and small arrays and open the files themselves, so any worker can run them; results are
gathered in task order, so the store is the same whichever scheduler ran them. The extraction tasks write
their chips straight into the Zarr arrays (whole chunks of chips, so no two tasks write the same chunk).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import rasterio
import zarr
from rasterio.windows import Window
from zarr.core.sync import sync

from eoforge.config import IGNORE_INDEX
from eoforge.errors import DataError
from eoforge.io.blockcache import block_cache
from eoforge.io.rasters import valid_mask

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


LOCAL_THREADS = 4
"""Threads of Dask's local scheduler for the chips tasks at most (fewer on fewer cores): the tasks spend their
time in GDAL and Blosc, which release the GIL; each thread holds one task's chips (one chunk at a time)."""


def local_threads() -> int:
    """Threads that run the chips tasks in this process: the usable cores, at most :data:`LOCAL_THREADS`."""
    return max(1, min(LOCAL_THREADS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1))


def run_tasks(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], client: Client | None) -> list[Any]:
    """Run ``fn(*a)`` for each ``a`` as Dask tasks; results in the order of ``args``. Without a client, on
    Dask's local threaded scheduler (:func:`local_threads`; synchronous with one)."""
    tasks = [dask.delayed(fn, pure=True)(*a) for a in args]
    if client is None:
        threads = local_threads()
        if threads == 1:
            return list(dask.compute(*tasks, scheduler="synchronous"))
        return list(dask.compute(*tasks, scheduler="threads", num_workers=threads))
    return list(client.gather(client.compute(tasks)))


def batches(rows: np.ndarray, strip: int, most: int) -> list[tuple[int, int]]:
    """``[start, stop)`` runs of consecutive chips (sorted by row) whose top rows fall in the same strip of
    ``strip`` rows, at most ``most`` each: a task then decompresses each raster tile about once (GDAL's
    block cache lives with the dataset a task opens)."""
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i] // strip != rows[start] // strip or i - start >= most:
            out.append((start, i))
            start = i
    return out


def read_groups(rows: np.ndarray, cols: np.ndarray, size: int, waste: float = 2.0) -> list[tuple[int, int]]:
    """``[start, stop)`` runs of consecutive chips read with one window, their bounding box: a run grows while
    that box holds at most ``waste`` times the chips' own pixels, so it stays close to the chips (a task's
    memory stays bounded by its chip count) while neighbouring and overlapping chips share one read.

    Hand-written: GDAL has no call for many small windows; one read per bounding box cuts the per-call cost
    (block lookups, band loops, array allocation) that dominates window reads of chip size.
    """
    out: list[tuple[int, int]] = []
    start, n = 0, len(rows)
    while start < n:
        stop = start + 1
        lo, hi = (int(rows[start]), int(cols[start])), (int(rows[start]), int(cols[start]))
        while stop < n:
            r, c = int(rows[stop]), int(cols[stop])
            lo2, hi2 = (min(lo[0], r), min(lo[1], c)), (max(hi[0], r), max(hi[1], c))
            box = (hi2[0] - lo2[0] + size) * (hi2[1] - lo2[1] + size)
            if box > waste * (stop + 1 - start) * size * size:
                break
            stop, lo, hi = stop + 1, lo2, hi2
        out.append((start, stop))
        start = stop
    return out


class Scratch:
    """One flat buffer that successive box reads of a task reuse, grown when a box needs more: a fresh array
    per read costs fresh pages (page faults, kernel zeroing) in every Dask thread's malloc arena."""

    def __init__(self) -> None:
        self._buf: dict[str, np.ndarray] = {}

    def take(self, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        """A C-contiguous ``shape`` array of ``dtype`` over the buffer (its values are left over)."""
        n = int(np.prod(shape))
        buf = self._buf.get(dtype)
        if buf is None or buf.size < n:
            buf = self._buf[dtype] = np.empty(n, dtype=dtype)
        return buf[:n].reshape(shape)


def read_chips(
    ds: rasterio.io.DatasetReader,
    rows: np.ndarray,
    cols: np.ndarray,
    size: int,
    band: int | None = None,
    scratch: Scratch | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(k, chip k)``: ``(bands, size, size)``, or ``(size, size)`` of ``band`` only, read one
    :func:`read_groups` box at a time (the same values as a window read of each chip). With ``scratch`` the
    boxes are read into its buffer: each chip is then a view valid until the next one is asked for."""
    for a, b in read_groups(rows, cols, size):
        r0, c0 = int(rows[a:b].min()), int(cols[a:b].min())
        w = Window(c0, r0, int(cols[a:b].max()) - c0 + size, int(rows[a:b].max()) - r0 + size)
        if scratch is None:
            box = ds.read(window=w) if band is None else ds.read(band, window=w)
        elif band is None:
            box = ds.read(window=w, out=scratch.take((ds.count, w.height, w.width), ds.dtypes[0]))
        else:
            box = ds.read(band, window=w, out=scratch.take((w.height, w.width), ds.dtypes[band - 1]))
        for k in range(a, b):
            r, c = int(rows[k]) - r0, int(cols[k]) - c0
            yield k, box[..., r : r + size, c : c + size]


def window_stats(
    image: str,
    labels: str,
    rows: np.ndarray,
    cols: np.ndarray,
    size: int,
    n_classes: int,
    need_valid: bool,
    cache: int,
    strip: int,
    most: int,
) -> tuple[np.ndarray, np.ndarray]:
    """For each chip (sorted by row): its valid (non-nodata) pixel count and its labelled pixel count per class.

    Reads the labels, and the image only when ``need_valid``; otherwise the valid count is -1 (unknown;
    prepare marks nodata pixels unlabelled, so labelled pixels are always valid ones). Reads go by
    :func:`batches` of ``strip`` rows and at most ``most`` chips (a read box never holds more). ``cache``: bytes
    of GDAL block cache this task needs (:func:`eoforge.io.blockcache.block_cache`).
    """
    valid = np.full(len(rows), -1, dtype=np.int64)
    counts = np.zeros((len(rows), n_classes), dtype=np.int64)
    scratch = Scratch()
    runs = batches(rows, strip, most)
    with block_cache(cache):
        with rasterio.open(labels) as lab:
            for a, b in runs:
                for k, lb in read_chips(lab, rows[a:b], cols[a:b], size, band=1, scratch=scratch):
                    counts[a + k] = np.bincount(lb.ravel(), minlength=256)[:n_classes]
        if need_valid:
            with rasterio.open(image) as src:
                for a, b in runs:
                    for k, img in read_chips(src, rows[a:b], cols[a:b], size, scratch=scratch):
                        valid[a + k] = int(np.count_nonzero(valid_mask(img)))
    return valid, counts


def pixel_keys(rows: np.ndarray, cols: np.ndarray, width: int, seed: int) -> np.ndarray:
    """A pseudo-random uint64 key per pixel, a function of its position and ``seed`` only (splitmix64).

    Hand-written: the point sample must not depend on how chips are batched into tasks, which a stream of
    numpy random numbers would; hashing the position gives the same order in any batching.
    """
    z = (rows.astype(np.uint64) * np.uint64(width) + cols.astype(np.uint64)) ^ np.uint64(
        (seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    )
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def extract(
    images: list[str],
    labels: list[str],
    store: str,
    start: int,
    rows: np.ndarray,
    cols: np.ndarray,
    splits: np.ndarray,
    scenes: np.ndarray,
    size: int,
    width: int,
    offsets: np.ndarray,
    points: tuple[int, int] | None,
    chunk: int,
    cache: int,
    overlap: bool,
) -> dict[str, np.ndarray] | None:
    """Copy chips ``start, start+1, …`` into the Zarr arrays ``image`` and ``label`` of ``store``, one chunk
    of ``chunk`` chips at a time (``start`` is a chunk boundary), each with one write call (one encode, one
    file). The rasters stay open for the whole task so a tile shared by two chunks is decompressed once.

    ``overlap``: write each chunk from a helper thread while the next one is read (two chunks held), for runs
    in this process, where the process owns the machine: a task thread otherwise waits for half its time on
    zarr's encode and write. Off on a cluster, where a worker's thread is its share of the machine (one task,
    one core) and 2 workers must be worth twice one. Chip ``k`` is read from ``images[scenes[k]]`` and ``labels[scenes[k]]`` (one pair for
    one scene).

    With ``points = (per_class, seed)``, also return this batch's candidates for the stratified point sample:
    per (split, class) the ``per_class`` labelled valid pixels of smallest :func:`pixel_keys`, at rows shifted
    by their scene's ``offsets`` entry (scenes stacked one under the other, ``width`` the widest).

    ``cache``: bytes of GDAL block cache the task needs (:func:`eoforge.io.blockcache.block_cache`).
    """
    g = zarr.open_group(store, mode="r+")
    img_arr, lab_arr = g["image"], g["label"]
    if not isinstance(img_arr, zarr.Array) or not isinstance(lab_arr, zarr.Array):
        raise DataError(f"{store}: 'image' and 'label' must be Zarr arrays; re-run `eoforge chips`")
    # every chip has valid pixels (the filters), so zarr's check for chunks equal to the fill value is skipped
    # (per array: zarr.config is process-wide, shared by the threads running tasks)
    img_arr, lab_arr = (a.with_config({"write_empty_chunks": True}) for a in (img_arr, lab_arr))
    found: list[dict[str, np.ndarray]] = []
    with contextlib.ExitStack() as stack:
        stack.enter_context(block_cache(cache))
        opened: dict[int, tuple[Any, Any]] = {}  # each scene's rasters, opened when first needed
        # a chunk's buffers (two with overlap: one being written) and one read box, reused chunk after chunk
        n_buf = min(chunk, len(rows))
        bufs = [
            (
                np.empty((n_buf, *img_arr.shape[1:]), dtype=np.float32),
                np.empty((n_buf, *lab_arr.shape[1:]), dtype=np.uint8),
            )
            for _ in range(2 if overlap else 1)
        ]
        scratch = Scratch()
        writer = stack.enter_context(ThreadPoolExecutor(1)) if overlap else None  # waits for its last write
        pending: Future[None] | None = None
        for i, a in enumerate(range(0, len(rows), chunk)):
            r, c, sc = rows[a : a + chunk], cols[a : a + chunk], np.asarray(scenes[a : a + chunk])
            img_buf, lab_buf = bufs[i % len(bufs)]  # the other buffer's write may still be running
            imgs, labs = img_buf[: len(r)], lab_buf[: len(r)]
            for s in np.unique(sc).tolist():
                if s not in opened:
                    opened[s] = (
                        stack.enter_context(rasterio.open(images[s])),
                        stack.enter_context(rasterio.open(labels[s])),
                    )
                src, lab = opened[s]
                sel = np.flatnonzero(sc == s)  # chips of one scene, still in row-major order
                for k, lb in read_chips(lab, r[sel], c[sel], size, band=1, scratch=scratch):
                    labs[sel[k]] = lb
                for k, img in read_chips(src, r[sel], c[sel], size, scratch=scratch):
                    imgs[sel[k]] = img
            if points is not None:
                found.extend(_labelled(imgs, labs, r + offsets[sc], c, splits[a : a + chunk]))
            if pending is not None:
                pending.result()  # the previous chunk is written: its buffer is free for the next one
            if writer is None:
                _write(img_arr, lab_arr, start + a, imgs, labs)
            else:
                pending = writer.submit(_write, img_arr, lab_arr, start + a, imgs, labs)
        if pending is not None:
            pending.result()
    if not found or points is None:
        return None
    return top_points({k: np.concatenate([f[k] for f in found]) for k in found[0]}, width, *points)


def _write(img_arr: zarr.Array, lab_arr: zarr.Array, a: int, imgs: np.ndarray, labs: np.ndarray) -> None:
    """One chunk of chips into both arrays at once, one trip through zarr's event loop (its async API, made
    for batching requests): returns when both files are written."""

    async def both() -> None:
        sel = slice(a, a + len(imgs))
        await asyncio.gather(img_arr.async_array.setitem(sel, imgs), lab_arr.async_array.setitem(sel, labs))

    sync(both())


def _labelled(
    imgs: np.ndarray, labs: np.ndarray, rows: np.ndarray, cols: np.ndarray, splits: np.ndarray
) -> Iterator[dict[str, np.ndarray]]:
    """Every labelled pixel of the chips: position, split, label and band values."""
    for k, (lb, img) in enumerate(zip(labs, imgs, strict=True)):
        yy, xx = np.nonzero(lb != IGNORE_INDEX)  # labels are unlabelled wherever the image is nodata
        yield {
            "row": yy + rows[k],
            "col": xx + cols[k],
            "split": np.full(len(yy), splits[k], dtype=np.int8),
            "label": lb[yy, xx],
            "values": img[:, yy, xx].T,
        }


def top_points(p: dict[str, np.ndarray], width: int, per_class: int, seed: int) -> dict[str, np.ndarray]:
    """Keep, per (split, class), the ``per_class`` distinct pixels of smallest key, sorted by split, class, key."""
    key = pixel_keys(p["row"], p["col"], width, seed)
    order = np.lexsort((key, p["label"], p["split"]))
    p = {k: v[order] for k, v in p.items()}
    key = key[order]
    pos = p["row"].astype(np.int64) * width + p["col"]
    group = p["split"].astype(np.int64) * 256 + p["label"]
    # drop repeats of a pixel (overlapping chips of one split): same group, same position, adjacent after sort
    dup = np.zeros(len(pos), dtype=bool)
    dup[1:] = (pos[1:] == pos[:-1]) & (group[1:] == group[:-1]) & (key[1:] == key[:-1])
    keep = ~dup
    p = {k: v[keep] for k, v in p.items()}
    group = group[keep]
    first = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    rank = np.arange(len(group)) - np.repeat(first, np.diff(np.r_[first, len(group)]))
    sel = rank < per_class
    return {k: v[sel] for k, v in p.items()}
