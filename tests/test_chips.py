from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from eoforge.chips import ChipStore, assign_splits, make_chips
from eoforge.config import ChipsConfig, parse_config
from eoforge.errors import InputError
from eoforge.prepare import prepare


@pytest.fixture
def prepared(scene: dict, tmp_path: Path):  # type: ignore[no-untyped-def]
    cfg = parse_config(
        {
            "inputs": {
                "images": [str(p) for p in scene["images"]],
                "labels": {"path": str(scene["labels"]), "column": "cover"},
                "classes": scene["classes"],
            }
        }
    )
    return prepare(cfg.inputs, tmp_path / "run")


def test_splits_share_no_pixel(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = ChipsConfig(
        size=32, stride=8, min_valid=0.1, split={"val": 0.25, "test": 0.25, "block_size": 32, "seed": 3}
    )
    store = make_chips(prepared, cfg, tmp_path / "run")
    idx = store.index()
    owner = np.full((64, 64), "", dtype=object)
    for _, r in idx.iterrows():
        block = owner[r.row : r.row + 32, r.col : r.col + 32]
        assert set(block.ravel()) <= {"", r.split}, "a pixel is shared by two splits"
        block[:] = r.split
    assert set(idx["split"]) == {"train", "val", "test"}
    assert sum(len(v) for v in store.splits.values()) == len(idx)


def test_store_holds_the_image_windows_and_footprints(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = make_chips(prepared, ChipsConfig(size=32, stride=16, split={"block_size": 32}), tmp_path / "run")
    again = ChipStore.load(tmp_path / "run" / "chips")
    assert again == store
    images, labels = store.arrays()
    idx = store.index()
    attrs = dict(zarr.open_group(str(store.zarr_path), mode="r").attrs)
    assert attrs["crs"] == "EPSG:32633" and attrs["transform"] == list(prepared.grid.transform)[:6]
    assert attrs["chip_rows_cols"] == idx[["row", "col"]].to_numpy().tolist()
    assert idx.crs.to_string() == "EPSG:32633"
    with rasterio.open(prepared.image) as src, rasterio.open(prepared.labels) as lab:
        for _, r in idx.iterrows():
            w = rasterio.windows.Window(r.col, r.row, 32, 32)
            np.testing.assert_array_equal(images[r.chip], src.read(window=w))
            np.testing.assert_array_equal(labels[r.chip], lab.read(1, window=w))
            assert r.geometry.bounds == pytest.approx(rasterio.windows.bounds(w, src.transform))


def test_assign_splits_is_by_whole_block_and_reproducible() -> None:
    blocks = [(i // 3, 0) for i in range(30)]  # 10 blocks, 3 chips each
    a = assign_splits(blocks, 0.2, 0.2, seed=1)
    assert a == assign_splits(blocks, 0.2, 0.2, seed=1)
    counts = {s: sum(3 for v in a.values() if v == s) for s in ("train", "val", "test")}
    assert counts == {"train": 18, "val": 6, "test": 6}


def test_too_few_blocks_is_a_clear_error(prepared, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="too few for a '.*' split; lower chips.split.block_size"):
        make_chips(prepared, ChipsConfig(size=32, stride=32, split={"block_size": 64}), tmp_path / "run")
    assert not (tmp_path / "run" / "chips").exists()


def test_chip_size_must_suit_the_unet() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        ChipsConfig(size=48)
