"""Stage 2, chips: cut training chips, split them by spatial blocks, store them in Zarr + a GeoParquet index.

A chip belongs to the spatial block (``split.block_size`` pixels) that contains it entirely; chips that
straddle a block boundary are dropped. Whole blocks go to one split, so no pixel of a test chip is in a
training or validation chip. ``OUT/chips/``: ``chips.zarr`` (arrays ``image`` (N, C, S, S) float32 with NaN
at nodata, ``label`` (N, S, S) uint8 class indices) read one chunk per chip, ``index.parquet`` (GeoParquet:
footprint, split, row, col), ``chips.json`` (sizes and counts).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import zarr
from rasterio.windows import Window
from shapely.geometry import box

from eoforge.config import IGNORE_INDEX, ChipsConfig
from eoforge.errors import InputError
from eoforge.geo import block_index, chip_windows
from eoforge.io.atomic import atomic_dir
from eoforge.prepare import PreparedScene

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ChipStore:
    """A written chip store: where it is and which chip indices belong to each split."""

    root: Path
    size: int
    splits: dict[str, list[int]]

    @property
    def zarr_path(self) -> Path:
        return self.root / "chips.zarr"

    @property
    def index_path(self) -> Path:
        return self.root / "index.parquet"

    def arrays(self) -> tuple[zarr.Array, zarr.Array]:
        g = zarr.open_group(str(self.zarr_path), mode="r")
        return g["image"], g["label"]  # type: ignore[return-value]

    def index(self) -> gpd.GeoDataFrame:
        return gpd.read_parquet(self.index_path)

    @classmethod
    def load(cls, root: str | Path) -> ChipStore:
        root = Path(root)
        meta = root / "chips.json"
        if not meta.is_file():
            raise InputError(f"{meta}: not found; run `eoforge chips` first")
        m = json.loads(meta.read_text())
        return cls(root=root, size=m["size"], splits={k: list(v) for k, v in m["splits"].items()})


def assign_splits(
    blocks: list[tuple[int, int]], val: float, test: float, seed: int
) -> dict[tuple[int, int], str]:
    """Assign whole blocks to splits so that each split's share of chips approaches its fraction.

    ``blocks`` holds one entry per chip (its block), so blocks with more chips weigh more.
    """
    uniq, counts = np.unique(np.array(blocks).reshape(-1, 2), axis=0, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    total = counts.sum()
    want = {"test": test * total, "val": val * total}
    got = {"test": 0, "val": 0}
    out: dict[tuple[int, int], str] = {}
    for k in order:
        key = (int(uniq[k][0]), int(uniq[k][1]))
        for split in ("test", "val"):
            if want[split] > 0 and got[split] < want[split]:
                out[key] = split
                got[split] += int(counts[k])
                break
        else:
            out[key] = "train"
    return out


def make_chips(scene: PreparedScene, cfg: ChipsConfig, out_dir: str | Path) -> ChipStore:
    """Cut, filter, split and store chips from a prepared scene into ``out_dir/chips``."""
    out_dir = Path(out_dir)
    size = cfg.size
    stride = cfg.stride or size
    block = cfg.split.block_size or 2 * size
    if block < size:
        raise InputError(
            f"chips.split.block_size ({block}) is smaller than chips.size ({size}); make it at least the chip size"
        )
    grid = scene.grid
    if grid.height < size or grid.width < size:
        raise InputError(
            f"{scene.image}: scene ({grid.width}x{grid.height} px) is smaller than one chip ({size} px); "
            "lower chips.size"
        )
    with rasterio.open(scene.labels) as lab:
        kept: list[tuple[Window, tuple[int, int]]] = []
        straddling = 0
        for w in chip_windows(grid.height, grid.width, size, stride):
            b = block_index(w, block)
            if b is None:
                straddling += 1
                continue
            frac = float((lab.read(1, window=w) != IGNORE_INDEX).mean())
            if frac >= cfg.min_valid and frac > 0:
                kept.append((w, b))
    if not kept:
        raise InputError(
            f"{scene.labels}: no chip has at least {cfg.min_valid:.0%} labelled valid pixels; "
            "lower chips.min_valid or chips.size"
        )
    assignment = assign_splits([b for _, b in kept], cfg.split.val, cfg.split.test, cfg.split.seed)
    split_of = [assignment[b] for _, b in kept]
    for s, frac in (("train", 1.0), ("val", cfg.split.val), ("test", cfg.split.test)):
        if frac > 0 and s not in split_of:
            raise InputError(
                f"{scene.image}: only {len(set(assignment))} spatial block(s) of {block} px hold chips, too few "
                f"for a '{s}' split; lower chips.split.block_size or chips.size"
            )
    n = len(kept)
    c = len(scene.bands)
    with atomic_dir(out_dir / "chips") as tmp:
        g = zarr.open_group(str(tmp / "chips.zarr"), mode="w")
        g.attrs.update(
            {
                "crs": grid.crs,
                "transform": list(grid.transform)[:6],
                "bands": scene.bands,
                "classes": dict(zip(map(str, scene.class_ids), scene.class_names, strict=True)),
                "ignore_index": IGNORE_INDEX,
                "chip_rows_cols": [[int(w.row_off), int(w.col_off)] for w, _ in kept],
            }
        )
        img_arr = g.create_array(
            "image", shape=(n, c, size, size), chunks=(1, c, size, size), dtype="float32"
        )
        lab_arr = g.create_array("label", shape=(n, size, size), chunks=(1, size, size), dtype="uint8")
        with rasterio.open(scene.image) as src, rasterio.open(scene.labels) as lab:
            for i, (w, _) in enumerate(kept):
                img_arr[i] = src.read(window=w)
                lab_arr[i] = lab.read(1, window=w)
        index = gpd.GeoDataFrame(
            {
                "chip": np.arange(n),
                "split": split_of,
                "row": [int(w.row_off) for w, _ in kept],
                "col": [int(w.col_off) for w, _ in kept],
                "block_row": [b[0] for _, b in kept],
                "block_col": [b[1] for _, b in kept],
            },
            geometry=[box(*grid.window_bounds(w)) for w, _ in kept],
            crs=grid.crs,
        )
        index.to_parquet(tmp / "index.parquet")
        splits = {s: [i for i, x in enumerate(split_of) if x == s] for s in SPLITS}
        meta = {
            "size": size,
            "stride": stride,
            "block_size": block,
            "min_valid": cfg.min_valid,
            "counts": {s: len(v) for s, v in splits.items()},
            "dropped_straddling_blocks": straddling,
            "splits": splits,
        }
        (tmp / "chips.json").write_text(json.dumps(meta))
    log.info("chips: %s (dropped %d straddling block edges)", meta["counts"], straddling)
    return ChipStore(root=out_dir / "chips", size=size, splits=splits)
