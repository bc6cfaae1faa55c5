"""Where chips go: the grid (edge-shifted), seeded random places, and class balancing. Pure array math.

Windows are ``(rows, cols)`` int64 arrays of top-left corners of ``size`` x ``size`` chips inside the scene.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)


def grid_starts(length: int, size: int, stride: int) -> np.ndarray:
    """Starts of chips of ``size`` every ``stride`` px along ``length``; when the last chip stops short of the
    edge one more is shifted back to end exactly at it, so every pixel is in some chip."""
    if size <= 0 or stride <= 0:
        raise ValueError("size and stride must be positive")
    if length < size:
        return np.zeros(0, dtype=np.int64)
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return np.asarray(starts, dtype=np.int64)


def grid_windows(height: int, width: int, size: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-major grid of chip corners with full edge coverage (see :func:`grid_starts`)."""
    r, c = np.meshgrid(grid_starts(height, size, stride), grid_starts(width, size, stride), indexing="ij")
    return r.ravel(), c.ravel()


def random_windows(
    height: int, width: int, size: int, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` chip corners drawn uniformly inside the scene (may repeat; callers de-duplicate)."""
    rows = rng.integers(0, height - size + 1, n, dtype=np.int64)
    cols = rng.integers(0, width - size + 1, n, dtype=np.int64)
    return rows, cols


def balance(
    base: np.ndarray, counts: np.ndarray, min_share: float, max_added: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pick chips so that every class present reaches ``min_share`` of the labelled pixels.

    ``counts`` is ``(n_candidates, n_classes)`` labelled pixels per class; ``base`` a boolean mask of the chips
    chosen to start with (the grid). Greedy, two phases. Add: while some present class is below its share,
    add the unchosen candidate holding most pixels of the class furthest below it (candidates overlap, so
    rare areas are oversampled). Remove: while some class is still below, drop the chosen chip with the
    largest share of the most common class among those whose removal raises every class below, never
    leaving fewer chips than half of the starting ones. Returns the chosen mask and
    the final share per class. Hand-written: no maintained library balances overlapping spatial windows by
    pixel counts.
    """
    chosen = base.copy()
    total = counts[chosen].sum(axis=0).astype(np.float64)
    present = counts.sum(axis=0) > 0
    stuck = np.zeros(counts.shape[1], dtype=bool)
    free = counts.astype(np.float64)
    free[chosen] = -1.0
    limit = max_added if max_added is not None else len(counts)
    added = 0

    def below() -> np.ndarray:
        return present & (total / max(total.sum(), 1.0) < min_share)

    while added < limit:
        low = below() & ~stuck
        if not low.any():
            break
        share = total / max(total.sum(), 1.0)
        c = int(np.argmin(np.where(low, share, np.inf)))
        best = int(np.argmax(free[:, c]))
        if free[best, c] <= 0:
            stuck[c] = True
            continue
        chosen[best] = True
        total += counts[best]
        free[best] = -1.0
        added += 1
    labelled = np.maximum(counts.sum(axis=1), 1).astype(np.float64)
    frac = counts / labelled[:, None]
    floor = int(base.sum()) // 2  # removing never leaves fewer chips than half of the starting ones
    while below().any() and int(chosen.sum()) > floor:
        low = below()
        share = total / max(total.sum(), 1.0)
        top = int(np.argmax(np.where(present, share, -np.inf)))
        # dropping a chip raises class c's share iff the chip holds less of c than the selection does
        removable = chosen & (frac[:, low] < share[low]).all(axis=1) & (counts[:, top] > 0)
        if not removable.any():
            break
        worst = int(np.argmax(np.where(removable, frac[:, top], -1.0)))
        chosen[worst] = False
        total -= counts[worst]
    return chosen, total / max(total.sum(), 1.0)
