"""chips.split.stratify: spatial blocks assigned by iterative stratification on their class pixels."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from conftest import write_tif
from hypothesis import given, settings
from hypothesis import strategies as st

from eoforge.chips import assign_blocks, make_chips
from eoforge.chips.leakage import check_store
from eoforge.chips.splits import split_blocks, stratify_blocks
from eoforge.config import ChipsConfig, InputsConfig, SplitConfig, parse_config
from eoforge.prepare import prepare


def _table(seed: int, n_rows: int, n_cols: int, k: int, max_w: int) -> tuple[np.ndarray, np.ndarray]:
    """A random block table: chips per block (some empty) and class pixels per block, class ``k - 1`` rare
    (in few blocks), class 0 everywhere; a block's labelled pixels are proportional to its chips."""
    rng = np.random.default_rng(seed)
    w = rng.integers(0, max_w + 1, (n_rows, n_cols))
    present = rng.random((n_rows, n_cols, k)) < rng.uniform(0.05, 1.0, k)
    present[..., 0] = True
    present[..., k - 1] = rng.random((n_rows, n_cols)) < 0.06
    share = (rng.random((n_rows, n_cols, k)) + 0.01) * present
    share /= share.sum(axis=2, keepdims=True)
    px = np.round(share * w[..., None] * 50).astype(np.int64)
    return w, px


tables = st.tuples(
    st.integers(0, 10_000), st.integers(1, 12), st.integers(1, 12), st.integers(2, 5), st.integers(1, 9)
)
fractions = st.sampled_from([(0.15, 0.2), (0.1, 0.1), (0.2, 0.3), (0.0, 0.25), (0.2, 0.0)])


@settings(max_examples=150, deadline=None)
@given(table=tables, fr=fractions, seed=st.integers(0, 99))
def test_every_block_gets_one_split_deterministically(
    table: tuple[int, int, int, int, int], fr: tuple[float, float], seed: int
) -> None:
    w, px = _table(*table)
    codes = stratify_blocks(w, px, *fr, seed)
    assert codes.shape == w.shape
    assert set(np.unique(codes).tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(codes, stratify_blocks(w, px, *fr, seed))
    for j, f in ((1, fr[0]), (2, fr[1])):  # a split of fraction 0 gets nothing
        if f == 0:
            assert not (codes == j).any()
    assert (codes[(w == 0) & (px.sum(axis=2) == 0)] == 0).all()  # empty blocks stay in train


@settings(max_examples=150, deadline=None)
@given(table=tables, fr=st.sampled_from([(0.15, 0.2), (0.1, 0.1), (0.2, 0.3)]), seed=st.integers(0, 99))
def test_the_rarest_class_reaches_every_split(
    table: tuple[int, int, int, int, int], fr: tuple[float, float], seed: int
) -> None:
    w, px = _table(*table)
    n_blocks = (px > 0).sum(axis=(0, 1))
    if not (n_blocks >= 3).any():
        return
    pixels = px.sum(axis=(0, 1))
    # the class taken first: in the fewest blocks, then the fewest pixels (all its blocks are still free)
    rarest = min(np.flatnonzero(n_blocks), key=lambda c: (n_blocks[c], pixels[c], c))
    codes = stratify_blocks(w, px, *fr, seed)
    if n_blocks[rarest] >= 3:
        assert all(px[codes == j, rarest].sum() > 0 for j in range(3))


@settings(max_examples=200, deadline=None)
@given(table=tables, fr=fractions, seed=st.integers(0, 99))
def test_chip_shares_stay_within_the_bound(
    table: tuple[int, int, int, int, int], fr: tuple[float, float], seed: int
) -> None:
    """The bound, proved: a split gets a block only while it is short of its chip share, except the one
    block per class that a split holding none of the class is given first; so a split ends at most
    ``(k + 1) * max_w`` chips over its share and, since the shares sum to the total, at most
    ``2 (k + 1) * max_w`` under it: ``|share - fraction| <= 2 (k + 1) max_w / total``. With many small
    blocks (total >> max_w) the shares meet the fractions."""
    w, px = _table(*table)
    total = int(w.sum())
    if total == 0:
        return
    k = px.shape[2]
    codes = stratify_blocks(w, px, *fr, seed)
    for j, f in ((1, fr[0]), (2, fr[1])):
        share = w[codes == j].sum() / total
        assert abs(share - f) <= 2 * (k + 1) * w.max() / total + 1e-12


def test_chip_shares_on_many_small_blocks() -> None:
    """Measured on 400 blocks of 0..4 chips: within 0.02 of the fractions (as close as the random
    assignment gets), the class shares closer than the random assignment's."""
    for seed in range(10):
        w, px = _table(seed, 20, 20, 4, 4)
        codes, plain = stratify_blocks(w, px, 0.15, 0.2, seed), assign_blocks(w, 0.15, 0.2, seed)
        total = w.sum()
        for j, f in ((1, 0.15), (2, 0.2)):
            assert abs(w[codes == j].sum() / total - f) <= 0.02
        want = np.array([0.65, 0.15, 0.2])[:, None]
        err = [
            np.abs(np.array([px[c == j].sum(axis=0) for j in range(3)]) / px.sum(axis=(0, 1)) - want).mean()
            for c in (codes, plain)
        ]
        assert err[0] < err[1]


def test_stratify_keeps_a_class_that_the_plain_split_leaves_out_of_validation() -> None:
    w = np.full((4, 6), 4)
    px = np.zeros((4, 6, 3), dtype=np.int64)
    px[..., 0] = 150
    px[..., 1] = 50
    for r, c in ((0, 0), (1, 4), (3, 2), (2, 5)):  # a rare class in 4 of 24 blocks
        px[r, c, 2] = 30
    missed = [s for s in range(30) if px[assign_blocks(w, 0.15, 0.2, s) == 1, 2].sum() == 0]
    assert missed  # the plain split does leave it out of validation for some seeds
    for s in missed:
        codes = stratify_blocks(w, px, 0.15, 0.2, s)
        assert all(px[codes == j, 2].sum() > 0 for j in range(3))
        assert [int((codes == j).sum()) for j in (1, 2)] == [
            4,
            5,
        ]  # 15 % and 20 % of 24 equal blocks, rounded


def test_split_blocks_weighs_classes_by_the_chips_held_whole() -> None:
    # 2 x 3 blocks of 64 px, chips of 32 px every 32 px: 4 chips held whole per block
    rows, cols = (a.ravel() for a in np.mgrid[0:128:32, 0:192:32])
    counts = np.zeros((len(rows), 2), dtype=np.int64)
    counts[:, 0] = 1000
    counts[(rows // 64 == 1) | (cols // 64 != 1), 1] = 24  # class 1 in 4 of the 6 blocks
    code, blocks = split_blocks(rows, cols, 32, (128, 192), 64, 0, 0.2, 0.2, 3, counts=counts)
    assert blocks.shape == (2, 3)
    np.testing.assert_array_equal(code, blocks[rows // 64, cols // 64])
    assert all(counts[code == j, 1].sum() > 0 for j in range(3))
    with pytest.raises(ValueError, match="does not match the block grid"):
        stratify_blocks(np.ones((2, 3)), np.ones((3, 2, 2)), 0.2, 0.2, 0)


def test_config_accepts_stratify_with_blocks_only() -> None:
    assert SplitConfig(stratify=True).stratify
    with pytest.raises(ValueError, match="split.stratify .* use it with split.mode blocks"):
        SplitConfig(mode="random", stratify=True)
    with pytest.raises(ValueError, match="split.by block"):
        SplitConfig(by="scene", stratify=True)


def _rare_scene(folder: Path, x0: float = 500_000.0) -> dict[str, object]:
    """A 192 x 192 px 2-band scene at x = ``x0`` (9 blocks of 64 px): classes 1 and 2 in two halves, the rare
    class 3 in a 10 px square inside 3 separated blocks."""
    h = w = 192
    labels = np.where(np.arange(w)[None, :] < 100, 1, 2).repeat(h, 0).astype(np.uint8)
    for r, c in ((0, 0), (0, 2), (2, 1)):
        labels[64 * r + 20 : 64 * r + 30, 64 * c + 20 : 64 * c + 30] = 3
    img = np.stack(np.mgrid[0:h, 0:w]).astype(np.float32) + 1
    t = Affine(10.0, 0, x0, 0, -10.0, 5_000_000.0)
    folder.mkdir(parents=True)
    write_tif(folder / "img.tif", img, nodata=-1, transform=t)
    write_tif(folder / "lab.tif", labels, nodata=0, transform=t)
    return {
        "name": folder.name,
        "images": [str(folder / "img.tif")],
        "labels": {"path": str(folder / "lab.tif")},
    }


def _stratified(seed: int) -> ChipsConfig:
    return ChipsConfig(
        size=32, split={"block_size": 64, "val": 0.2, "test": 0.2, "seed": seed, "stratify": True}
    )


def test_chips_run_puts_a_rare_class_in_every_split(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """One scene; every split's index rows hold the rare class; the leakage check (inside make_chips) passes."""
    one = _rare_scene(tmp_path / "scene")
    inputs = {"images": one["images"], "labels": one["labels"], "classes": {1: "c1", 2: "c2", 3: "rare"}}
    scene = prepare(parse_config({"inputs": inputs}).inputs, tmp_path / "run")
    for seed in range(3):
        with caplog.at_level(logging.INFO, logger="eoforge.chips.make"):
            store = make_chips(scene, _stratified(seed), tmp_path / f"out{seed}")
        check_store(store)
        index = store.index()
        for s in ("train", "val", "test"):
            assert index.loc[index["split"] == s, "px_rare"].sum() > 0, (seed, s)
        assert json.loads((store.root / "chips.json").read_text())["stratify"] is True
        assert "labelled pixels per split and class" in caplog.text


def test_chips_run_stratifies_every_scene_by_block(tmp_path: Path) -> None:
    """inputs.scenes with split.by block: each scene is stratified on its own."""
    scenes = [_rare_scene(tmp_path / f"s{k}", 500_000.0 + 5_000 * k) for k in range(2)]
    inputs = InputsConfig.model_validate(
        {"scenes": scenes, "bands": ["red", "nir"], "classes": {1: "c1", 2: "c2", 3: "rare"}}
    )
    run = prepare(inputs, tmp_path / "run")
    store = make_chips(run, _stratified(4), tmp_path / "run")
    check_store(store)
    index = store.index()
    for name in ("s0", "s1"):
        sub = index[index["scene"] == name]
        for s in ("train", "val", "test"):
            assert sub.loc[sub["split"] == s, "px_rare"].sum() > 0, (name, s)


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(32, 200),
    w=st.integers(32, 200),
    size=st.sampled_from([8, 16, 32]),
    block_mult=st.integers(1, 3),
    buffer=st.integers(0, 10),
    seed=st.integers(0, 1000),
)
def test_stratified_block_split_never_leaks(
    h: int, w: int, size: int, block_mult: int, buffer: int, seed: int
) -> None:
    from eoforge.chips.leakage import leaks
    from eoforge.chips.samplers import grid_windows

    rows, cols = grid_windows(h, w, size, max(4, size // 2))
    counts = np.random.default_rng(seed).integers(0, 3, (len(rows), 3)) * np.array([50, 10, 1])
    block = size * block_mult
    code, blocks = split_blocks(rows, cols, size, (h, w), block, buffer, 0.2, 0.2, seed, counts=counts)
    kept = code >= 0
    assert len(leaks(rows[kept], cols[kept], code[kept], size, buffer)) == 0
    br, bc = (rows + size // 2) // block, (cols + size // 2) // block
    np.testing.assert_array_equal(code[kept], blocks[br, bc][kept])


@pytest.mark.parametrize("seed", range(6))
def test_the_largest_block_of_a_rare_class_goes_to_train(seed: int) -> None:
    # 30 blocks of 4 chips; a rare class in three blocks of 90, 10 and 8 px, a common class everywhere
    weights = np.full((5, 6), 4)
    px = np.zeros((5, 6, 2))
    px[..., 0] = 500
    px[0, 1, 1], px[3, 3, 1], px[4, 0, 1] = 90, 10, 8
    codes = stratify_blocks(weights, px, 0.15, 0.2, seed)
    assert codes[0, 1] == 0  # most of the rare class is learnt from, not only tested
    assert {int(codes[3, 3]), int(codes[4, 0])} == {1, 2}  # and it still reaches validation and test
