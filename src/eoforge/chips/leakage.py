"""The leakage check run after every chips run: no chip may overlap, or come closer than the buffer to, a
chip of another split. Distances are in pixels between footprints (0 = touching edges)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import shapely

from eoforge.errors import DataError

if TYPE_CHECKING:
    import geopandas as gpd

    from eoforge.chips.store import ChipStore


def close_pairs(rows: np.ndarray, cols: np.ndarray, size: int, buffer: int) -> np.ndarray:
    """Index pairs ``(i, j)``, ``i < j``, of chips whose footprints overlap or lie less than ``buffer`` px apart
    (Chebyshev gap: pixels strictly between them along rows or columns). Uses an STR-tree, not all pairs."""
    if len(rows) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    boxes = shapely.box(cols, rows, cols + size, rows + size)
    grown = shapely.box(cols - buffer, rows - buffer, cols + size + buffer, rows + size + buffer)
    tree = shapely.STRtree(boxes)
    a, b = tree.query(grown, predicate="intersects")
    keep = a < b
    a, b = a[keep], b[keep]
    gap = np.maximum(np.abs(rows[a] - rows[b]), np.abs(cols[a] - cols[b])) - size  # <0 overlap, 0 touching
    close = gap < buffer if buffer > 0 else gap < 0
    return np.stack([a[close], b[close]], axis=1).astype(np.int64)


def leaks(rows: np.ndarray, cols: np.ndarray, splits: np.ndarray, size: int, buffer: int) -> np.ndarray:
    """Pairs of chips of different splits that overlap or lie closer than ``buffer`` px."""
    pairs = close_pairs(rows, cols, size, buffer)
    return pairs[splits[pairs[:, 0]] != splits[pairs[:, 1]]]


def check_leakage(
    rows: np.ndarray, cols: np.ndarray, splits: np.ndarray, size: int, buffer: int, where: str
) -> None:
    """Raise :class:`DataError` naming the first chips of different splits that overlap or are too close."""
    bad = leaks(rows, cols, np.asarray(splits), size, buffer)
    if len(bad) == 0:
        return
    shown = []
    for i, j in bad[:5]:
        gap = max(abs(int(rows[i] - rows[j])), abs(int(cols[i] - cols[j]))) - size
        what = "overlap" if gap < 0 else f"are {gap} px apart"
        shown.append(f"chips {i} ({splits[i]}) and {j} ({splits[j]}) {what}")
    raise DataError(
        f"{where}: spatial leakage between splits, {len(bad)} pair(s): {'; '.join(shown)}"
        f"{' …' if len(bad) > 5 else ''} (buffer {buffer} px); re-run `eoforge chips` to rebuild the store"
    )


def check_across_scenes(index: gpd.GeoDataFrame, where: str) -> None:
    """Raise :class:`DataError` when chips of different splits from different scenes overlap on the ground
    (scenes that share an area): pixel offsets of two scenes are not comparable, footprints are."""
    geoms = index.geometry.to_numpy()
    a, b = shapely.STRtree(geoms).query(geoms, predicate="intersects")
    scene, split = index["scene"].to_numpy(), index["split"].to_numpy()
    keep = (a < b) & (scene[a] != scene[b]) & (split[a] != split[b])
    a, b = a[keep], b[keep]
    shared = shapely.area(shapely.intersection(geoms[a], geoms[b])) > 0  # touching edges share no pixel
    a, b = a[shared], b[shared]
    if len(a) == 0:
        return
    i, j = int(a[0]), int(b[0])
    raise DataError(
        f"{where}: scenes {scene[i]} and {scene[j]} overlap on the ground and their chips {i} ({split[i]}) and "
        f"{j} ({split[j]}) share pixels ({len(a)} pair(s)); give scenes that do not overlap or "
        "use chips.split.by: scene with the overlapping scenes in one split"
    )


def check_store(store: ChipStore) -> None:
    """Run :func:`check_leakage` on a written store's index (footprints, splits and buffer of ``chips.json``),
    within each scene, and :func:`check_across_scenes` when the store holds several."""
    idx = store.index()
    scenes = idx["scene"].to_numpy() if "scene" in idx.columns else np.zeros(len(idx))
    for name in dict.fromkeys(scenes.tolist()):
        sub = idx[scenes == name]
        check_leakage(
            sub["row"].to_numpy(),
            sub["col"].to_numpy(),
            sub["split"].to_numpy(),
            store.size,
            int(store.meta().get("buffer", 0)),
            where=str(store.index_path),
        )
    if len(set(scenes.tolist())) > 1:
        check_across_scenes(idx, where=str(store.index_path))
