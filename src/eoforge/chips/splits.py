"""Which split each chip goes to: whole spatial blocks, random chips, or named regions; with a buffer.

Splits are coded ``0 = train, 1 = val, 2 = test`` (``-1``: chip dropped). Every mode drops chips that come
closer than ``buffer`` pixels to a chip of another split, so :mod:`eoforge.chips.leakage` finds nothing.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from eoforge.errors import InputError
from eoforge.geo import Grid

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def assign_blocks(weights: np.ndarray, val: float, test: float, seed: int) -> np.ndarray:
    """Assign every block of a ``(rows, cols)`` grid of chip counts to a split, whole, so that each split's
    share of chips approaches its fraction. Blocks are visited in a seeded random order; each goes to the
    first of test, val still short of its target, else to train (as do blocks of weight 0). Returns split
    codes of the same shape."""
    flat = weights.ravel()
    order = np.random.default_rng(seed).permutation(flat.size)
    total = float(flat.sum())
    want = {2: test * total, 1: val * total}
    got = {2: 0.0, 1: 0.0}
    out = np.zeros(flat.size, dtype=np.int8)
    for k in order:
        if flat[k] == 0:
            continue
        for code in (2, 1):
            if want[code] > 0 and got[code] < want[code]:
                out[k] = code
                got[code] += float(flat[k])
                break
    return out.reshape(weights.shape)


def stratify_blocks(
    weights: np.ndarray, class_pixels: np.ndarray, val: float, test: float, seed: int
) -> np.ndarray:
    """Assign every block of a ``(rows, cols)`` grid of chip counts to a split, whole, by iterative
    stratification on the blocks' class pixels ``class_pixels`` (``(rows, cols, classes)``), so that every
    class reaches every split where its blocks allow it and each split's share of every class (and of chips)
    approaches its fraction. Returns split codes of the same shape as ``weights``.

    Iterative stratification (Sechidis, Tsoumakas & Vlahavas 2011, "On the stratification of multi-label
    data"; the algorithm of scikit-multilearn's ``IterativeStratification``), hand-written because no installed
    library stratifies weighted items (blocks of many pixels) with a chip-count target: the class in the fewest
    unassigned blocks goes first; each of its unassigned blocks (the largest first, then in a seeded random order) goes to the split
    with the largest remaining demand for that class (its fraction of the class's pixels less what it has),
    with two changes: a split with a fraction > 0 that holds none of the class yet comes first, so a class in
    >= 3 free blocks reaches all three splits; then splits still short of their chip share come before those
    that have it (weighted blocks otherwise let the chip shares drift: on random tables this keeps them as
    close to the fractions as :func:`assign_blocks` does, at no cost in class balance). Ties go to the largest
    remaining chip demand, then a seeded random order. Blocks with no labelled pixels go to the split with the
    largest remaining chip demand (those of weight 0 to train)."""
    shape = weights.shape
    if class_pixels.ndim != weights.ndim + 1 or class_pixels.shape[: len(shape)] != shape:
        raise ValueError(f"class_pixels {class_pixels.shape} does not match the block grid {shape}")
    w = weights.ravel().astype(np.float64)
    px = class_pixels.reshape(w.size, -1).astype(np.float64)
    frac = np.array([1.0 - val - test, val, test])
    active = frac > 0
    rng = np.random.default_rng(seed)
    visit = np.empty(w.size, dtype=np.int64)
    visit[rng.permutation(w.size)] = np.arange(w.size)  # each block's place in the seeded visiting order
    chip_need = frac * w.sum()
    class_need = frac[:, None] * px.sum(axis=0)[None, :]
    holds = np.zeros_like(class_need, dtype=bool)
    out = np.zeros(w.size, dtype=np.int8)
    free = np.ones(w.size, dtype=bool)

    def give(b: int, code: int) -> None:
        out[b] = code
        free[b] = False
        chip_need[code] -= w[b]
        class_need[code] -= px[b]
        holds[code] |= px[b] > 0

    def pick(first: np.ndarray, need: np.ndarray) -> int:
        tie = rng.random(3)  # a fresh seeded draw per decision: the last tie-breaker
        keys = [
            (bool(first[j]), bool(chip_need[j] > 0), float(need[j]), float(chip_need[j]), float(tie[j]))
            for j in range(3)
        ]
        return max((j for j in range(3) if active[j]), key=lambda j: keys[j])

    while True:
        present = px[free] > 0
        n_blocks = present.sum(axis=0)
        if not n_blocks.any():
            break
        left = np.where(present, px[free], 0.0).sum(axis=0)
        cls = min(np.flatnonzero(n_blocks), key=lambda c: (int(n_blocks[c]), float(left[c]), int(c)))
        todo = np.flatnonzero(free & (px[:, cls] > 0))
        # the class's largest block first, so the split with the largest demand (usually train) gets it: a rare
        # class in few blocks is then mostly learnt, not only tested; the others in the seeded order, so
        # the seed still draws different splits
        todo = todo[np.argsort(visit[todo])]
        todo = np.concatenate([todo[[np.argmax(px[todo, cls])]], np.delete(todo, np.argmax(px[todo, cls]))])
        for b in todo:
            give(int(b), pick(active & ~holds[:, cls], class_need[:, cls]))
    rest = np.flatnonzero(free & (w > 0))
    for b in rest[np.argsort(visit[rest])]:
        give(int(b), pick(np.zeros(3, dtype=bool), chip_need))
    return out.reshape(shape)


def centre_blocks(rows: np.ndarray, cols: np.ndarray, size: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """The block (row, col) of each chip's centre pixel."""
    return (rows + size // 2) // block, (cols + size // 2) // block


def split_blocks(
    rows: np.ndarray,
    cols: np.ndarray,
    size: int,
    grid_shape: tuple[int, int],
    block: int,
    buffer: int,
    val: float,
    test: float,
    seed: int,
    counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Spatial block split: blocks go whole to a split (weighted by the chips inside them); a chip takes
    its centre block's split and is dropped (``-1``) if its footprint grown by ``ceil(buffer / 2)`` px
    touches a block of another split. Two kept chips of different splits are then at least ``buffer`` px
    apart, and every pixel of a chip lies in a block of the chip's split. Given the chips' labelled pixels
    per class ``counts`` (``(chips, classes)``), blocks are assigned by :func:`stratify_blocks` on the class
    pixels of the chips that weigh them, else by :func:`assign_blocks`. Returns the chips' split codes and
    the ``(block rows, block cols)`` grid of block split codes."""
    height, width = grid_shape
    nbr, nbc = math.ceil(height / block), math.ceil(width / block)
    br, bc = centre_blocks(rows, cols, size, block)
    inside = (rows // block == (rows + size - 1) // block) & (cols // block == (cols + size - 1) // block)
    weights = np.zeros((nbr, nbc), dtype=np.int64)
    if inside.any():  # weigh blocks by the chips they hold whole (those no split border can drop)
        at, sel = (rows[inside] // block, cols[inside] // block), inside
    else:
        at, sel = (br, bc), np.ones(len(rows), dtype=bool)
    np.add.at(weights, at, 1)
    if counts is None:
        blocks = assign_blocks(weights, val, test, seed)
    else:  # the same chips weigh the blocks' classes
        class_pixels = np.zeros((nbr, nbc, counts.shape[1]), dtype=np.int64)
        np.add.at(class_pixels, at, counts[sel])
        blocks = stratify_blocks(weights, class_pixels, val, test, seed)
    code = blocks[br, bc].astype(np.int8)
    h = (buffer + 1) // 2
    r0 = np.clip(rows - h, 0, height - 1) // block
    r1 = np.clip(rows + size - 1 + h, 0, height - 1) // block
    c0 = np.clip(cols - h, 0, width - 1) // block
    c1 = np.clip(cols + size - 1 + h, 0, width - 1) // block
    for i in range(len(rows)):
        touched = blocks[r0[i] : r1[i] + 1, c0[i] : c1[i] + 1]
        if (touched != code[i]).any():
            code[i] = -1
    return code, blocks


def split_random(
    rows: np.ndarray, cols: np.ndarray, size: int, buffer: int, val: float, test: float, seed: int
) -> np.ndarray:
    """Random split: chips drawn to splits in seeded random order; a chip overlapping (or closer than
    ``buffer`` to) an already kept chip of another split is dropped. Warns: neighbouring chips of different
    splits still share spatially autocorrelated pixels, so scores are optimistic."""
    from eoforge.chips.leakage import close_pairs

    n = len(rows)
    order = np.random.default_rng(seed).permutation(n)
    want = np.zeros(n, dtype=np.int8)
    n_test, n_val = round(test * n), round(val * n)
    want[order[:n_test]] = 2
    want[order[n_test : n_test + n_val]] = 1
    pairs = close_pairs(rows, cols, size, buffer)
    nbrs: list[list[int]] = [[] for _ in range(n)]
    for i, j in pairs:
        nbrs[i].append(int(j))
        nbrs[j].append(int(i))
    code = np.full(n, -1, dtype=np.int8)
    for i in order:
        if all(code[j] in (-1, want[i]) for j in nbrs[i]):
            code[i] = want[i]
    log.warning(
        "chips.split.mode random: chips of different splits lie side by side, so test scores are optimistic "
        "(spatial leakage); use split.mode blocks or regions for honest accuracy"
    )
    return code


def split_regions(
    rows: np.ndarray, cols: np.ndarray, size: int, grid: Grid, buffer: int, path: Path, column: str
) -> np.ndarray:
    """Split by a vector of regions whose ``column`` names the split: a chip inside the regions of one split
    takes it; a chip outside every region, or whose footprint grown by ``buffer`` px reaches into a region of
    another split, is dropped."""
    try:
        regions = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise InputError(
            f"{path}: cannot read the split regions ({exc}); give a vector file OGR can open"
        ) from None
    if column not in regions.columns:
        raise InputError(
            f"{path}: no column '{column}' naming the split; set chips.split.regions.column to one of "
            f"{[c for c in regions.columns if c != 'geometry']}"
        )
    bad = sorted(set(map(str, regions[column])) - set(SPLITS))
    if bad:
        raise InputError(
            f"{path}: column '{column}' holds {bad}; each region's split must be train, val or test"
        )
    if regions.crs is None:
        raise InputError(f"{path}: the regions have no CRS; set one (e.g. ogr2ogr -a_srs)")
    regions = regions.to_crs(grid.crs)
    t = grid.transform
    x0, y0 = t.c + cols * t.a, t.f + rows * t.e
    x1, y1 = x0 + size * t.a, y0 + size * t.e
    boxes = shapely.box(np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1))
    tol = 1e-3 * abs(t.a)  # regions drawn on pixel edges, maybe reprojected: compare up to 1/1000 px
    inner = shapely.buffer(boxes, -tol, join_style="mitre")
    grown = shapely.buffer(boxes, buffer * abs(t.a) - tol, join_style="mitre")
    code = np.full(len(rows), -1, dtype=np.int8)
    unions = {s: shapely.union_all(regions.geometry[regions[column].astype(str) == s].values) for s in SPLITS}
    for k, s in enumerate(SPLITS):
        inside = shapely.covered_by(inner, unions[s])
        clash = np.zeros(len(rows), dtype=bool)
        for o in SPLITS:
            if o != s and not unions[o].is_empty:
                clash |= shapely.intersects(grown, unions[o]) & ~shapely.touches(grown, unions[o])
        code[inside & ~clash] = k
    return code
