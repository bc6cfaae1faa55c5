"""Chips: samplers, splits, leakage check, Dask, the store and its CLI."""

from __future__ import annotations

import itertools
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import xarray as xr
import zarr
from conftest import CRS, pixel_box, write_tif
from hypothesis import given, settings
from hypothesis import strategies as st

from eoforge.chips import ChipStore, assign_blocks, check_leakage, make_chips
from eoforge.chips.leakage import check_store, leaks
from eoforge.chips.make import sample
from eoforge.chips.samplers import grid_starts
from eoforge.chips.splits import split_blocks, split_random
from eoforge.chips.store import CHUNK_BYTES, chips_per_chunk, chunk_runs, info, iter_chips
from eoforge.chips.tasks import Scratch, batches, read_chips, read_groups
from eoforge.cli import main
from eoforge.config import ChipsConfig, ComputeConfig, parse_config
from eoforge.errors import DataError, InputError
from eoforge.prepare import PreparedScene, prepare


def _prepare(tmp: Path, labels: np.ndarray, nodata: np.ndarray | None = None) -> PreparedScene:
    """A 2-band scene whose band 0 is the row index and band 1 the column index (so chips are checkable),
    with raster labels (class ids 1, 2, …; 0 = unlabelled)."""
    h, w = labels.shape
    img = np.stack(np.mgrid[0:h, 0:w]).astype(np.float32) + 1
    if nodata is not None:
        img[:, nodata] = -1
    write_tif(tmp / "img.tif", img, nodata=-1)
    write_tif(tmp / "lab.tif", labels.astype(np.uint8), nodata=0)
    ids = sorted(set(np.unique(labels).tolist()) - {0}) or [1, 2]
    ids = ids if len(ids) > 1 else [*ids, ids[0] + 1]
    cfg = parse_config(
        {
            "inputs": {
                "images": [str(tmp / "img.tif")],
                "labels": {"path": str(tmp / "lab.tif")},
                "classes": {i: f"c{i}" for i in ids},
            }
        }
    )
    return prepare(cfg.inputs, tmp / "run")


def _two_class(h: int, w: int) -> np.ndarray:
    return np.where(np.arange(w)[None, :] < w // 2, 1, 2).repeat(h, 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 300), st.integers(1, 64), st.integers(1, 64))
def test_grid_starts_cover_the_edge(length: int, size: int, stride: int) -> None:
    starts = grid_starts(length, size, stride)
    if stride > size:  # gaps between chips by request; the edge is still reached
        assert len(starts) == 0 or starts[-1] == length - size
        return
    if length < size:
        assert len(starts) == 0
        return
    covered = np.zeros(length, dtype=bool)
    for s in starts:
        assert 0 <= s <= length - size
        covered[s : s + size] = True
    assert covered.all()
    assert list(starts) == sorted(set(starts))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60)), min_size=1, max_size=30),
    st.integers(1, 12),
    st.sampled_from([1.0, 2.0, 4.0]),
)
def test_read_groups_cover_each_chip_once_in_a_bounded_box(
    corners: list[tuple[int, int]], size: int, waste: float
) -> None:
    rows, cols = (np.array(v) for v in zip(*sorted(corners), strict=True))
    groups = read_groups(rows, cols, size, waste)
    assert [a for a, _ in groups] == [0, *[b for _, b in groups[:-1]]] and groups[-1][1] == len(rows)
    for a, b in groups:
        box = (rows[a:b].max() - rows[a:b].min() + size) * (cols[a:b].max() - cols[a:b].min() + size)
        assert b - a == 1 or box <= waste * (b - a) * size * size


@settings(max_examples=25, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(0, 30)), min_size=1, max_size=12),
    st.booleans(),
    st.booleans(),
)
def test_read_chips_equal_window_reads(
    tmp_path_factory: pytest.TempPathFactory, corners: list, band: bool, reuse: bool
) -> None:
    """With a Scratch buffer (boxes read into one reused buffer) each chip, copied when it comes, still equals
    a window read of it."""
    tif = tmp_path_factory.getbasetemp() / "read_chips.tif"
    if not tif.exists():
        write_tif(tif, np.random.default_rng(0).random((3, 56, 46)).astype(np.float32))
    rows, cols = (np.array(v) for v in zip(*sorted(corners), strict=True))
    with rasterio.open(tif) as ds:
        scratch = Scratch() if reuse else None
        got = {
            k: v.copy() for k, v in read_chips(ds, rows, cols, 16, band=1 if band else None, scratch=scratch)
        }
        assert sorted(got) == list(range(len(rows)))
        for k, (r, c) in enumerate(zip(rows, cols, strict=True)):
            w = rasterio.windows.Window(int(c), int(r), 16, 16)
            np.testing.assert_array_equal(got[k], ds.read(1, window=w) if band else ds.read(window=w))


def test_grid_chips_hold_every_valid_pixel(tmp_path: Path) -> None:
    h, w = 83, 101  # not multiples of the stride (24) nor of the size (32)
    nodata = np.zeros((h, w), dtype=bool)
    nodata[:10, :10] = True
    scene = _prepare(tmp_path, _two_class(h, w), nodata)
    cfg = ChipsConfig(size=32, stride=24, min_labelled=0.0, split={"val": 0.0, "test": 0.0, "block_size": 64})
    store = make_chips(scene, cfg, tmp_path / "run")
    idx = store.index()
    covered = np.zeros((h, w), dtype=bool)
    for r in idx.itertuples():
        covered[r.row : r.row + 32, r.col : r.col + 32] = True
    assert covered[~nodata].all()
    assert idx["row"].max() == h - 32 and idx["col"].max() == w - 32
    images, _ = store.arrays()
    for r in idx.itertuples():  # the image is (row + 1, col + 1): each chip is its window
        img = np.asarray(images[r.chip])
        ok = ~np.isnan(img[0])
        assert np.array_equal(img[0][ok], (np.arange(32)[:, None] + r.row + 1).repeat(32, 1)[ok])
        assert np.array_equal(img[1][ok], (np.arange(32)[None, :] + r.col + 1).repeat(32, 0)[ok])


def test_filters_drop_nodata_and_unlabelled_chips(tmp_path: Path) -> None:
    h, w = 64, 128
    labels = _two_class(h, w)
    labels[:, 96:] = 0  # the right quarter unlabelled
    nodata = np.zeros((h, w), dtype=bool)
    nodata[:, :32] = True  # the left quarter nodata
    scene = _prepare(tmp_path, labels, nodata)
    _, cols, _, _, _ = sample(scene, ChipsConfig(size=32, min_valid=0.0, min_labelled=0.0))
    assert sorted(set(cols.tolist())) == [32, 64]
    _, cols, counts, _, _ = sample(scene, ChipsConfig(size=32, stride=16, min_valid=0.75, min_labelled=0.0))
    assert sorted(set(cols.tolist())) == [32, 48, 64, 80]  # 96 is valid but has no labelled pixel
    _, cols, counts, _, _ = sample(scene, ChipsConfig(size=32, stride=16, min_labelled=0.75))
    assert sorted(set(cols.tolist())) == [32, 48, 64] and (counts.sum(axis=1) >= 0.75 * 1024).all()


def test_random_chips_are_seeded(tmp_path: Path) -> None:
    scene = _prepare(tmp_path, _two_class(96, 96))
    cfg = ChipsConfig(size=32, sampler="random", count=20, seed=5, min_labelled=0.0)
    a = sample(scene, cfg)
    b = sample(scene, cfg)
    c = sample(scene, cfg.model_copy(update={"seed": 6}))
    assert len(a[0]) == 20 and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not (np.array_equal(a[0], c[0]) and np.array_equal(a[1], c[1]))
    assert len(set(zip(a[0].tolist(), a[1].tolist(), strict=True))) == 20


def test_balanced_raises_a_rare_class_to_its_share(tmp_path: Path) -> None:
    labels = _two_class(128, 256)
    labels[40:58, 70:88] = 3  # 324 px: 0.99 % of the scene, 1.98 % of the left (train) half
    scene = _prepare(tmp_path, labels)
    regions = gpd.GeoDataFrame(
        {"split": ["train", "val", "test"]},
        geometry=[pixel_box(0, 0, 128, 128), pixel_box(0, 128, 64, 256), pixel_box(64, 128, 128, 256)],
        crs=CRS,
    )
    regions.to_file(tmp_path / "regions.gpkg")
    split = {"mode": "regions", "regions": {"path": tmp_path / "regions.gpkg"}}
    grid = make_chips(scene, ChipsConfig(size=32, split=split), tmp_path / "grid").meta()
    px = grid["class_pixels"]["train"]
    assert px["c3"] / sum(px.values()) == pytest.approx(324 / 128**2)
    cfg = ChipsConfig(size=32, sampler="balanced", balance={"min_share": 0.05}, split=split)
    store = make_chips(scene, cfg, tmp_path / "bal")
    meta, idx = store.meta(), store.index()
    px = meta["class_pixels"]["train"]
    assert px["c3"] / sum(px.values()) >= 0.05
    assert meta["balance"]["share_after"]["c3"] == pytest.approx(px["c3"] / sum(px.values()))
    assert meta["counts"]["val"] == grid["counts"]["val"] and meta["counts"]["test"] == grid["counts"]["test"]
    assert set(idx[idx.split == "train"].col) > {0, 32, 64, 96}  # off-grid chips were added to train only
    assert set(idx[idx.split != "train"].col) <= {128, 160, 192, 224}


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(40, 260),
    w=st.integers(40, 260),
    size=st.sampled_from([8, 16, 32]),
    stride=st.integers(4, 32),
    block_mult=st.integers(1, 4),
    buffer=st.integers(0, 12),
    seed=st.integers(0, 1000),
)
def test_block_split_never_leaks(
    h: int, w: int, size: int, stride: int, block_mult: int, buffer: int, seed: int
) -> None:
    from eoforge.chips.samplers import grid_windows

    rows, cols = grid_windows(h, w, size, stride)
    block = size * block_mult
    code, blocks = split_blocks(rows, cols, size, (h, w), block, buffer, 0.2, 0.2, seed)
    assert blocks.shape == (-(-h // block), -(-w // block))
    kept = code >= 0
    assert len(leaks(rows[kept], cols[kept], code[kept], size, buffer)) == 0
    # every pixel of a kept chip lies in a block of the chip's split (what evaluation rebuilds from blocks)
    br, bc = (rows + size // 2) // block, (cols + size // 2) // block
    owner: dict[tuple[int, int], int] = {}
    for i in np.flatnonzero(kept):
        for r in range(rows[i] // block, (rows[i] + size - 1) // block + 1):
            for c in range(cols[i] // block, (cols[i] + size - 1) // block + 1):
                assert owner.setdefault((r, c), int(code[i])) == code[i] == blocks[r, c]
        assert owner[(int(br[i]), int(bc[i]))] == code[i]


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 60), size=st.sampled_from([8, 16]), buffer=st.integers(0, 6), seed=st.integers(0, 99))
def test_random_split_drops_neighbours_of_other_splits(n: int, size: int, buffer: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, 80, n), rng.integers(0, 80, n)
    code = split_random(rows, cols, size, buffer, 0.3, 0.3, seed)
    kept = code >= 0
    assert kept.any()
    assert len(leaks(rows[kept], cols[kept], code[kept], size, buffer)) == 0


def test_assign_blocks_weights_and_seed() -> None:
    weights = np.full((2, 5), 3)
    a = assign_blocks(weights, 0.2, 0.2, seed=1)
    assert np.array_equal(a, assign_blocks(weights, 0.2, 0.2, seed=1))
    assert [int((a == k).sum()) for k in range(3)] == [6, 2, 2]


def test_leakage_check_names_the_chips() -> None:
    rows, cols = np.array([0, 0, 0, 100]), np.array([0, 20, 40, 0])
    with pytest.raises(DataError, match=r"chips 0 \(train\) and 1 \(test\) overlap"):
        check_leakage(rows, cols, np.array(["train", "test", "test", "val"]), 32, 0, where="x")
    with pytest.raises(DataError, match=r"chips 0 \(train\) and 1 \(test\) are 8 px apart .*buffer 10 px"):
        check_leakage(np.array([0, 0]), np.array([0, 40]), np.array(["train", "test"]), 32, 10, where="x")
    check_leakage(np.array([0, 0]), np.array([0, 40]), np.array(["train", "test"]), 32, 8, where="x")


@pytest.fixture
def built(tmp_path: Path) -> ChipStore:
    scene = _prepare(tmp_path, _two_class(128, 192))
    cfg = ChipsConfig(
        size=32, stride=16, points={"per_class": 40}, split={"block_size": 64, "buffer": 4, "seed": 2}
    )
    return make_chips(scene, cfg, tmp_path / "run")


def test_store_built_to_overlap_fails_the_check(built: ChipStore) -> None:
    check_store(built)
    idx = built.index()
    t, r = idx[idx.split == "test"].iloc[0], idx[idx.split == "train"].iloc[0]
    idx.loc[idx.chip == t.chip, ["row", "col"]] = [r.row + 8, r.col]
    idx.to_parquet(built.index_path)
    with pytest.raises(DataError, match=rf"spatial leakage .*chips {min(t.chip, r.chip)} \("):
        check_store(built)


def test_store_opens_in_xarray_with_dimensions_and_crs(built: ChipStore) -> None:
    ds = xr.open_zarr(built.zarr_path)
    assert ds["image"].dims == ("chip", "band", "y", "x")
    assert ds["label"].dims == ("chip", "y", "x")
    idx = built.index()
    assert ds.sizes["chip"] == len(idx) and ds["label"].dtype == np.uint8
    assert rasterio.crs.CRS.from_wkt(ds["spatial_ref"].attrs["crs_wkt"]) == rasterio.crs.CRS.from_user_input(
        CRS
    )
    k = int(idx.chip.iloc[-1])
    t = rasterio.Affine(*ds["transform"].values[k])
    x0, y0 = t * (0, 0)
    assert (x0, y0) == pytest.approx((idx.geometry.iloc[-1].bounds[0], idx.geometry.iloc[-1].bounds[3]))
    assert float(ds["chip_x"][k, 0]) == pytest.approx(x0 + 5.0)
    assert np.array_equal(ds["split"].values, idx["split"].map({"train": 0, "val": 1, "test": 2}).to_numpy())
    assert float(ds["image"][k, 1, 0, 0]) == idx.col.iloc[-1] + 1


def test_index_points_and_info(built: ChipStore) -> None:
    idx = built.index()
    assert {"chip", "split", "row", "col", "block_row", "block_col", "scene", "px_c1", "px_c2"} <= set(
        idx.columns
    )
    _, labels = built.arrays()
    for r in idx.head(5).itertuples():
        lab = np.asarray(labels[r.chip])
        assert (r.px_c1, r.px_c2) == ((lab == 0).sum(), (lab == 1).sum())
    pts = built.points()
    per = pts.groupby(["split", "label"]).size()
    assert (per <= 40).all() and (per == 40).sum() >= 4
    assert not pts.duplicated(["row", "col"]).any()
    assert np.array_equal(pts["img_b1"].to_numpy(), pts["row"].to_numpy() + 1.0)  # band values at the point
    assert np.array_equal(pts["img_b2"].to_numpy(), pts["col"].to_numpy() + 1.0)
    assert np.array_equal(pts["class_id"].to_numpy(), pts["label"].to_numpy() + 1)
    owner = {(r.row, r.col, r.split) for r in idx.itertuples()}
    for p in pts.head(20).itertuples():  # every point lies in a chip of its split
        assert any(r <= p.row < r + 32 and c <= p.col < c + 32 and s == p.split for r, c, s in owner)
    blocks = built.meta()["block_splits"]  # evaluation can rebuild a per-pixel split raster from these
    assert all(blocks[r.block_row][r.block_col] == r.split for r in idx.itertuples())
    counts = info(built)
    assert counts["train"]["chips"] == int((idx.split == "train").sum())
    assert sum(v["c1"] + v["c2"] for v in counts.values()) == int(idx.px_c1.sum() + idx.px_c2.sum())


def test_regions_split_with_buffer(tmp_path: Path) -> None:
    scene = _prepare(tmp_path, _two_class(64, 192))
    regions = gpd.GeoDataFrame(
        {"part": ["train", "val", "test"]},
        geometry=[pixel_box(0, 0, 64, 64), pixel_box(0, 64, 64, 128), pixel_box(0, 128, 64, 192)],
        crs=CRS,
    ).to_crs("EPSG:4326")  # reprojected back onto the scene grid by the split
    regions.to_file(tmp_path / "regions.gpkg")
    cfg = ChipsConfig(
        size=32,
        stride=8,
        split={
            "mode": "regions",
            "buffer": 8,
            "regions": {"path": tmp_path / "regions.gpkg", "column": "part"},
        },
    )
    idx = make_chips(scene, cfg, tmp_path / "run").index()
    cols = {s: sorted(set(idx[idx.split == s].col)) for s in ("train", "val", "test")}
    assert cols == {"train": [0, 8, 16, 24], "val": [72, 80, 88], "test": [136, 144, 152, 160]}
    bad = ChipsConfig(size=32, split={"mode": "regions", "regions": {"path": tmp_path / "regions.gpkg"}})
    with pytest.raises(InputError, match="no column 'split' naming the split"):
        make_chips(scene, bad, tmp_path / "run2")


def test_local_cluster_writes_the_same_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chunks of 4 chips, 2 chunks per task: 27 chips make 4 tasks, most with a chunk written while the next is read
    monkeypatch.setattr("eoforge.chips.store.CHUNK", 4)
    monkeypatch.setattr("eoforge.chips.make.CHUNKS_PER_TASK", 2)
    scene = _prepare(tmp_path, _two_class(64, 160))
    cfg = ChipsConfig(size=32, stride=16, points={"per_class": 30}, split={"block_size": 32})
    one = make_chips(scene, cfg, tmp_path / "one")
    two = make_chips(scene, cfg, tmp_path / "two", compute=ComputeConfig(workers=2))
    files = sorted(p.relative_to(one.root) for p in one.root.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two.root) for p in two.root.rglob("*") if p.is_file())
    assert len(files) > len(one.index()) + 5
    image = zarr.open_array(str(one.zarr_path / "image"), mode="r")
    assert image.chunks == (4, 2, 32, 32) and image.shards is None
    for f in files:
        assert (one.root / f).read_bytes() == (two.root / f).read_bytes(), f


def test_chips_cli_stage_info_and_export(
    built: ChipStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = built.root.parent
    main(["chips", "info", str(run)])
    out = capsys.readouterr().out
    assert "train" in out and "c2" in out and f"{len(built.splits['test'])}" in out
    main(["chips", "export", str(run), "--format", "tif", "-o", str(tmp_path / "tifs")])
    k = built.splits["test"][0]
    with rasterio.open(tmp_path / "tifs" / "test" / f"chip_{k:06d}_image.tif") as src:
        r = built.index().iloc[k]
        assert src.crs == rasterio.crs.CRS.from_user_input(CRS)
        assert src.bounds == pytest.approx(r.geometry.bounds)
        np.testing.assert_array_equal(src.read(), np.asarray(built.arrays()[0][k]))
    assert gpd.read_file(tmp_path / "tifs" / "footprints.gpkg").shape[0] == len(built.index())


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="needs chips.count"):
        ChipsConfig(sampler="random")
    with pytest.raises(ValueError, match="split.regions exactly when"):
        ChipsConfig(split={"mode": "regions"})
    with pytest.raises(ValueError, match="multiple of 32"):
        ChipsConfig(size=48)


def test_too_few_blocks_is_a_clear_error(tmp_path: Path) -> None:
    scene = _prepare(tmp_path, _two_class(64, 64))
    with pytest.raises(InputError, match="too few for a '.*' split; lower chips.split.block_size"):
        make_chips(scene, ChipsConfig(size=32, split={"block_size": 64}), tmp_path / "run")
    assert not (tmp_path / "run" / "chips").exists()
    zarr  # noqa: B018


def test_plots_are_pngs_of_the_store(built: ChipStore) -> None:
    from eoforge.chips.plots import class_histogram_png, footprint_map_png

    scene = PreparedScene.load(built.root.parent / "prepared")
    for png in (footprint_map_png(built, scene), class_histogram_png(built, scene.class_names)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        with rasterio.MemoryFile(png) as mem, mem.open() as im:
            assert im.width > 200 and im.height > 150
    with pytest.raises(KeyError):
        class_histogram_png(built, ["nope"])


def test_regions_path_is_relative_to_the_config_and_cli_compute(tmp_path: Path) -> None:
    import yaml

    from eoforge.config import load_config, with_compute

    raw = {
        "inputs": {"images": ["a.tif"], "labels": {"path": "l.tif"}, "classes": {1: "a", 2: "b"}},
        "chips": {"split": {"mode": "regions", "regions": {"path": "regions.gpkg", "column": "part"}}},
    }
    (tmp_path / "a.tif").touch()
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.chips.split.regions is not None and cfg.chips.split.regions.path == tmp_path / "regions.gpkg"
    assert with_compute(cfg, None, None) is cfg
    assert with_compute(cfg, None, 3).compute.workers == 3
    with pytest.raises(InputError, match="--scheduler/--workers: .*not both"):
        with_compute(cfg, "tcp://127.0.0.1:8786", 2)


def test_dataset_batches_from_the_cache_equal_store_reads(built: ChipStore) -> None:
    import pickle

    import torch

    from eoforge.data import ChipDataset

    mean, std = [1.0, 1.0], [2.0, 4.0]
    idx = built.index().set_index("chip")
    lazy = ChipDataset(built, "train", mean, std, cache_mb=0)
    cached = ChipDataset(built, "train", mean, std, cache_mb=1)
    assert not lazy.cached and cached.cached
    assert not ChipDataset(built, "train", mean, std, cache_mb=0.001).cached  # the split does not fit
    pos = [3, 0, 3, len(lazy) - 1, 1]  # unsorted, with a repeat
    ramp = np.arange(32)
    for ds in (lazy, cached):
        image, mask = ds.batch(pos)
        assert image.shape == (5, 2, 32, 32) and image.dtype == torch.float32 and mask.dtype == torch.int64
        for k, p in enumerate(pos):
            r, c = idx.loc[built.splits["train"][p], ["row", "col"]]
            # band 0 is the scene row + 1, band 1 the column + 1: normalised with (x - mean) / std
            np.testing.assert_allclose(image[k, 0].numpy(), np.repeat(((r + ramp) / 2.0)[:, None], 32, 1))
            np.testing.assert_allclose(image[k, 1].numpy(), np.repeat(((c + ramp) / 4.0)[None, :], 32, 0))
            np.testing.assert_array_equal(mask[k].numpy(), np.repeat((c + ramp >= 96)[None, :], 32, 0))
        assert ds[pos[0]]["image"].shape == (2, 32, 32)
    assert cached._cache is not None and lazy._cache is None
    copy = pickle.loads(pickle.dumps(cached))  # what a worker process receives: no arrays, no cache
    assert copy._cache is None and copy._arrays is None and copy.cached
    torch.testing.assert_close(copy.batch(pos)[0], cached.batch(pos)[0])


class _Cluster:
    """What `tasks_per_call` asks of a dask.distributed Client: its workers' threads."""

    def __init__(self, threads: list[int]) -> None:
        self.threads = threads

    def scheduler_info(self) -> dict[str, object]:
        return {"workers": {f"tcp://w{i}": {"nthreads": n} for i, n in enumerate(self.threads)}}


@given(
    items=st.integers(1, 500),
    most=st.integers(1, 16),
    threads=st.lists(st.integers(1, 4), min_size=1, max_size=6),
)
def test_tasks_per_call_gives_every_thread_work_and_stays_within_most(
    items: int, most: int, threads: list[int]
) -> None:
    from eoforge.compute import tasks_per_call

    assert tasks_per_call(items, most, None) == most  # in-process: the fewest, largest tasks
    per = tasks_per_call(items, most, _Cluster(threads))  # type: ignore[arg-type]
    assert 1 <= per <= most
    n_tasks = -(-items // per)
    # as many tasks as the items allow, up to two per thread (or `most` caps the task size)
    assert n_tasks >= min(items, 2 * sum(threads)) or per == 1 or per == most


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 300), max_size=60, unique=True).map(sorted),
    st.integers(1, 70),
)
def test_chunk_runs_cover_the_chips_one_chunk_each(chips: list[int], chunk: int) -> None:
    got = chunk_runs(np.asarray(chips, dtype=np.int64), chunk)
    assert [k for a, b in got for k in range(a, b)] == list(range(len(chips)))
    assert all(len({c // chunk for c in chips[a:b]}) == 1 for a, b in got)
    assert all(chips[b - 1] // chunk != chips[b] // chunk for _, b in got[:-1])


def test_iter_chips_reads_each_chunk_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="w")
    data = np.arange(20 * 2 * 3 * 3, dtype=np.float32).reshape(20, 2, 3, 3)
    img = g.create_array("image", shape=data.shape, chunks=(8, 2, 3, 3), dtype="float32")
    lab = g.create_array("label", shape=(20, 3, 3), chunks=(8, 3, 3), dtype="uint8")
    img[...] = data
    lab[...] = (np.arange(20)[:, None, None] * np.ones((1, 3, 3))).astype(np.uint8)
    reads: list[object] = []
    real = zarr.Array.__getitem__

    def counted(self: zarr.Array, sel: object) -> object:
        reads.append(sel)
        return real(self, sel)

    monkeypatch.setattr(zarr.Array, "__getitem__", counted)
    got = list(iter_chips(img, lab, [17, 3, 5, 9, 3, 19]))
    assert [j for j, _, _ in got] == [3, 5, 9, 17, 19]
    for j, i, m in got:
        np.testing.assert_array_equal(i, data[j])
        assert (m == j).all()
    assert reads == [slice(3, 6), slice(3, 6), slice(9, 10), slice(9, 10), slice(17, 20), slice(17, 20)]


def test_large_chips_get_fewer_per_chunk() -> None:
    assert chips_per_chunk(6, 64) == 64  # 96 KiB chips: the default
    assert chips_per_chunk(13, 256) == 2  # 3.25 MiB chips
    assert chips_per_chunk(13, 1024) == 1  # one 52 MiB chip is still one chunk
    for bands, size in ((4, 128), (13, 256), (6, 256)):
        k = chips_per_chunk(bands, size)
        assert k * bands * size * size * 4 <= CHUNK_BYTES < (k + 1) * bands * size * size * 4


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 2000), min_size=1, max_size=300), st.integers(1, 4))
def test_stats_runs_cover_the_chips_in_whole_batches(tops: list[int], threads: int) -> None:
    """In-process statistics tasks: at most one per thread, consecutive, covering every chip once, cut only
    where batches are cut (whole strips, at most MAX_PER_TASK chips per read)."""
    from eoforge.chips import make as mk

    rows = np.sort(np.asarray(tops, dtype=np.int64))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mk, "local_threads", lambda: threads)
        runs = mk._stats_runs(rows, None)
    cuts = {b for _, b in batches(rows, mk.STRIP, mk.MAX_PER_TASK)}
    assert len(runs) <= threads and runs[0][0] == 0 and runs[-1][1] == len(rows)
    assert all(b == a2 for (_, b), (a2, _) in itertools.pairwise(runs))
    assert all(b in cuts for _, b in runs)
