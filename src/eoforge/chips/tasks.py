"""The chips stage's Dask tasks (one per batch of chips) and how they run: in this process by default, on a
``dask.distributed`` cluster when :func:`eoforge.compute.dask_client` gives a client.

Tasks take paths and small arrays and open the files themselves, so any worker can run them; results are
gathered in task order, so the store is the same whichever scheduler ran them. The extraction tasks write
their chips straight into the Zarr arrays (one chunk per chip, so no two tasks write the same chunk).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import dask
import numpy as np
import rasterio
import zarr
from rasterio.windows import Window

from eoforge.config import IGNORE_INDEX
from eoforge.errors import DataError
from eoforge.io.rasters import valid_mask

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


def run_tasks(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]], client: Client | None) -> list[Any]:
    """Run ``fn(*a)`` for each ``a`` as Dask tasks; results in the order of ``args``."""
    tasks = [dask.delayed(fn, pure=True)(*a) for a in args]
    if client is None:
        return list(dask.compute(*tasks, scheduler="synchronous"))
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


def window_stats(
    image: str, labels: str, rows: np.ndarray, cols: np.ndarray, size: int, n_classes: int, need_valid: bool
) -> tuple[np.ndarray, np.ndarray]:
    """For each chip: its valid (non-nodata) pixel count and its labelled pixel count per class.

    Reads the labels, and the image only when ``need_valid``; otherwise the valid count is -1 (unknown;
    prepare marks nodata pixels unlabelled, so labelled pixels are always valid ones).
    """
    valid = np.full(len(rows), -1, dtype=np.int64)
    counts = np.zeros((len(rows), n_classes), dtype=np.int64)
    with rasterio.open(image) as src, rasterio.open(labels) as lab:
        for i, (r, c) in enumerate(zip(rows, cols, strict=True)):
            w = Window(int(c), int(r), size, size)
            if need_valid:
                valid[i] = int(np.count_nonzero(valid_mask(src.read(window=w))))
            counts[i] = np.bincount(lab.read(1, window=w).ravel(), minlength=256)[:n_classes]
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
) -> dict[str, np.ndarray] | None:
    """Copy chips ``start, start+1, …`` into the Zarr arrays ``image`` and ``label`` of ``store``; chip ``k``
    is read from ``images[scenes[k]]`` and ``labels[scenes[k]]`` (one pair for one scene).

    With ``points = (per_class, seed)``, also return this batch's candidates for the stratified point sample:
    per (split, class) the ``per_class`` labelled valid pixels of smallest :func:`pixel_keys`, at rows shifted
    by their scene's ``offsets`` entry (scenes stacked one under the other, ``width`` the widest).
    """
    g = zarr.open_group(store, mode="r+")
    img_arr, lab_arr = g["image"], g["label"]
    if not isinstance(img_arr, zarr.Array) or not isinstance(lab_arr, zarr.Array):
        raise DataError(f"{store}: 'image' and 'label' must be Zarr arrays; re-run `eoforge chips`")
    found: list[dict[str, np.ndarray]] = []
    n = len(rows)
    imgs = np.empty((n, *img_arr.shape[1:]), dtype=np.float32)
    labs = np.empty((n, *lab_arr.shape[1:]), dtype=np.uint8)
    with contextlib.ExitStack() as stack:
        opened: dict[int, tuple[Any, Any]] = {}
        for k, (r, c, s) in enumerate(zip(rows, cols, scenes, strict=True)):
            s = int(s)
            if s not in opened:
                opened[s] = (
                    stack.enter_context(rasterio.open(images[s])),
                    stack.enter_context(rasterio.open(labels[s])),
                )
            src, lab = opened[s]
            w = Window(int(c), int(r), size, size)
            img = imgs[k] = src.read(window=w)
            lb = labs[k] = lab.read(1, window=w)
            if points is None:
                continue
            yy, xx = np.nonzero(lb != IGNORE_INDEX)  # labels are unlabelled wherever the image is nodata
            found.append(
                {
                    "row": yy + r + offsets[s],
                    "col": xx + c,
                    "split": np.full(len(yy), splits[k], dtype=np.int8),
                    "label": lb[yy, xx],
                    "values": img[:, yy, xx].T,
                }
            )
    img_arr[start : start + n] = imgs  # one call per batch: zarr writes the chunks concurrently
    lab_arr[start : start + n] = labs
    if points is None:
        return None
    if not found:
        return None
    return top_points({k: np.concatenate([f[k] for f in found]) for k in found[0]}, width, *points)


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
