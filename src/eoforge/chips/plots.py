"""Report figures of a chip store, as PNG bytes: chip footprints by split over the scene, and class
histograms per split. Memory is bounded by the figure: the scene is read decimated to at most ``max_px``."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import rasterio
from matplotlib.patches import Patch, Rectangle

from eoforge.chips.splits import SPLITS
from eoforge.chips.store import ChipStore
from eoforge.prepare import PreparedScene

SPLIT_COLORS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#d62728"}


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _backdrop(scene: PreparedScene, max_px: int) -> np.ndarray:
    """The scene decimated to at most ``max_px`` on its long side: RGB from red/green/blue bands when named,
    else band 1 in grey; stretched between the 2nd and 98th percentiles."""
    g = scene.grid
    f = max(1, int(np.ceil(max(g.height, g.width) / max_px)))
    shape = (max(1, g.height // f), max(1, g.width // f))
    names = scene.bands
    order = [names.index(b) + 1 for b in ("red", "green", "blue") if b in names]
    order = order if len(order) == 3 else [1]
    with rasterio.open(scene.image) as src:
        img = src.read(order, out_shape=(len(order), *shape)).astype(np.float64)
    if not np.isfinite(img).any():
        return np.zeros((*shape, 3))
    lo, hi = np.nanpercentile(img, 2), np.nanpercentile(img, 98)
    img = np.clip(np.nan_to_num((img - lo) / max(hi - lo, 1e-9)), 0, 1).transpose(1, 2, 0)
    return np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img


def _draw_chips(ax: Any, idx: Any, scene: PreparedScene, max_px: int) -> None:
    """The scene's backdrop and the footprints of ``idx``'s chips coloured by split, on ``ax``."""
    left, bottom, right, top = scene.grid.bounds
    ax.imshow(_backdrop(scene, max_px), extent=(left, right, bottom, top), interpolation="nearest")
    for s in SPLITS:
        for geom in idx.geometry[idx["split"] == s]:
            x0, y0, x1, y1 = geom.bounds
            ax.add_patch(
                Rectangle(
                    (x0, y0),
                    x1 - x0,
                    y1 - y0,
                    fill=True,
                    alpha=0.12,
                    lw=0.8,
                    ec=SPLIT_COLORS[s],
                    fc=SPLIT_COLORS[s],
                )
            )
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    ax.ticklabel_format(useOffset=False, style="plain")
    ax.tick_params(labelsize=7)


def _legend(idx: Any) -> list[Patch]:
    counts = {s: int((idx["split"] == s).sum()) for s in SPLITS}
    return [
        Patch(fc=SPLIT_COLORS[s], ec=SPLIT_COLORS[s], alpha=0.6, label=f"{s} ({counts[s]})") for s in SPLITS
    ]


def footprint_map_png(
    store: ChipStore, scene: PreparedScene, max_px: int = 800, only: str | None = None
) -> bytes:
    """Chip footprints coloured by split (outlines; overlapping chips darken) over the scene; ``only``: the
    name of that scene in a many-scene store (its chips only)."""
    idx = store.index()
    if only is not None:
        idx = idx[idx["scene"] == only]
    left, bottom, right, top = scene.grid.bounds
    aspect = (top - bottom) / max(right - left, 1e-9)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 7 * aspect)))
    _draw_chips(ax, idx, scene, max_px)
    ax.legend(handles=_legend(idx), loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"{len(idx)} chips of {store.size} px by split{f' in scene {only}' if only else ''}")
    return _png(fig)


MAX_PANELS = 24
"""Scenes drawn at most by :func:`scenes_footprint_png` (the figure stays readable and its memory bounded)."""


def scenes_footprint_png(
    store: ChipStore, scenes: Sequence[tuple[str | None, PreparedScene]], max_px: int = 800
) -> bytes:
    """Chip footprints by split over every scene: one scene as :func:`footprint_map_png`, several as small
    multiples (a panel per scene with its own chips, three per row, the first :data:`MAX_PANELS`), each
    backdrop decimated to ``max_px`` divided by the columns."""
    if len(scenes) == 1:
        name, scene = scenes[0]
        return footprint_map_png(store, scene, max_px, only=name or None)
    idx = store.index()
    shown = list(scenes)[:MAX_PANELS]
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    for ax, (name, scene) in zip(axes.flat, shown, strict=False):
        part = idx[idx["scene"] == name]
        _draw_chips(ax, part, scene, max(100, max_px // cols))
        ax.set_title(f"{name}: {len(part)} chips", fontsize=9)
    for ax in list(axes.flat)[len(shown) :]:
        ax.axis("off")
    fig.legend(handles=_legend(idx), loc="upper center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 1.0))
    more = f" (first {len(shown)} of {len(scenes)} scenes)" if len(scenes) > len(shown) else ""
    fig.suptitle(f"{len(idx)} chips of {store.size} px by split{more}", y=1.04)
    fig.tight_layout()
    return _png(fig)


def class_histogram_png(store: ChipStore, class_names: list[str]) -> bytes:
    """Labelled pixels per class, one group of bars per class and one bar per split (share of the split's
    labelled pixels, count on top), from the index's ``px_<class>`` columns."""
    idx = store.index()
    px = np.array(
        [[int(idx.loc[idx["split"] == s, f"px_{n}"].sum()) for n in class_names] for s in SPLITS],
        dtype=np.int64,
    )
    share = px / np.maximum(px.sum(axis=1, keepdims=True), 1)
    x = np.arange(len(class_names))
    width = 0.8 / len(SPLITS)
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(class_names) + 2), 3.5))
    for k, s in enumerate(SPLITS):
        bars = ax.bar(
            x + (k - 1) * width, share[k], width, color=SPLIT_COLORS[s], label=f"{s} ({px[k].sum():,} px)"
        )
        for b, n in zip(bars, px[k], strict=True):
            if n:
                ax.text(
                    b.get_x() + b.get_width() / 2,
                    b.get_height(),
                    f"{n:,}",
                    ha="center",
                    va="bottom",
                    fontsize=6,
                    rotation=90,
                )
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set_ylabel("share of the split's labelled pixels")
    ax.set_ylim(0, min(1.0, float(share.max()) * 1.3 + 0.02))
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("Classes per split (a pixel counts once per chip holding it)")
    return _png(fig)
