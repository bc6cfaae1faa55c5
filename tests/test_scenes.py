"""Many scenes, one model (issue 11): per-scene preparation with pooled statistics, one chip store whose index
says which scene, splits by block within scenes or by whole scene, per-scene maps and metrics."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import yaml
import zarr
from affine import Affine
from conftest import CRS, write_tif
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from shapely.geometry import box

from eoforge.chips import make_chips
from eoforge.chips.leakage import check_across_scenes, check_store
from eoforge.config import ChipsConfig, InputsConfig, parse_config
from eoforge.errors import DataError, InputError
from eoforge.prepare import PreparedScene, prepare

SIZE = 96


def _scene(folder: Path, k: int, x0: float) -> dict[str, object]:
    """A 96 x 96 px scene at x = ``x0``: 2 bands, classes 1/2/3 in 12-px stripes whose order depends on ``k``
    (so every block holds every class), band values that tell the classes apart, a label raster."""
    rng = np.random.default_rng(k)
    rows = np.arange(SIZE)[:, None].repeat(SIZE, 1)
    cls = (rows // 12 + k) % 3
    level = np.array([100.0, 600.0, 1100.0])[cls] + 50 * k
    t = Affine(10.0, 0, x0, 0, -10.0, 5_000_000.0)
    folder.mkdir()
    for b in range(2):
        write_tif(
            folder / f"b{b}.tif", (level + rng.normal(0, 20, cls.shape) + b).astype(np.float32), transform=t
        )
    write_tif(folder / "labels.tif", (cls + 1).astype(np.uint8), nodata=0, transform=t)
    return {
        "name": f"s{k}",
        "images": [str(folder / "b0.tif"), str(folder / "b1.tif")],
        "labels": {"path": str(folder / "labels.tif")},
    }


@pytest.fixture
def three(tmp_path: Path) -> list[dict[str, object]]:
    """Three scenes 5 km apart (no overlap), same CRS and bands."""
    return [_scene(tmp_path / f"scene{k}", k, 500_000.0 + 5_000 * k) for k in range(3)]


def _inputs(scenes: list[dict[str, object]]) -> InputsConfig:
    return InputsConfig.model_validate(
        {"scenes": scenes, "bands": ["red", "nir"], "classes": {1: "a", 2: "b", 3: "c"}}
    )


def test_config_scenes_or_images(three: list[dict[str, object]]) -> None:
    base = {"bands": ["red", "nir"], "classes": {1: "a", 2: "b"}}
    with pytest.raises(ValueError, match="not both"):
        InputsConfig.model_validate({**base, "scenes": three, "images": ["x.tif"]})
    with pytest.raises(ValueError, match="appear twice"):
        InputsConfig.model_validate({**base, "scenes": [three[0], three[0]]})
    with pytest.raises(InputError, match="chips.split.by scene needs inputs.scenes"):
        parse_config(
            {
                "inputs": {**base, "images": ["x.tif"], "labels": {"path": "l.tif"}},
                "chips": {"split": {"by": "scene"}},
            }
        )
    sub = _inputs(three).scene_inputs()
    assert [n for n, _ in sub] == ["s0", "s1", "s2"]
    assert sub[1][1].label_source().path == Path(str(three[1]["labels"]["path"]))  # type: ignore[index]


def test_prepare_pools_statistics_over_all_scenes(three: list[dict[str, object]], tmp_path: Path) -> None:
    run = prepare(_inputs(three), tmp_path / "out")
    assert run.scenes == ["s0", "s1", "s2"]
    pixels = []
    for k, (name, part) in enumerate(run.parts()):
        assert part.root == tmp_path / "out" / "prepared" / name
        with rasterio.open(part.image) as src:  # each scene on its own grid
            assert src.transform.c == 500_000.0 + 5_000 * k
            pixels.append(src.read().reshape(2, -1))
        assert part.mean == pytest.approx(run.mean) and part.std == pytest.approx(run.std)
    every = np.concatenate(pixels, axis=1).astype(np.float64)
    assert run.mean == pytest.approx(every.mean(axis=1).tolist(), rel=1e-9)
    assert run.std == pytest.approx(every.std(axis=1).tolist(), rel=1e-9)
    assert sum(run.class_counts) == 3 * SIZE * SIZE
    assert PreparedScene.load(tmp_path / "out" / "prepared").scenes == run.scenes


def _covered(rows: np.ndarray, cols: np.ndarray, size: int) -> set[tuple[int, int]]:
    return {(r + i, c + j) for r, c in zip(rows, cols, strict=True) for i in range(size) for j in range(size)}


@pytest.mark.parametrize("by", ["block", "scene"])
def test_two_scene_chips_keep_splits_apart(three: list[dict[str, object]], tmp_path: Path, by: str) -> None:
    run = prepare(_inputs(three), tmp_path / "out")
    cfg = ChipsConfig.model_validate(
        {
            "size": 32,
            "stride": 16,
            "points": {"per_class": 4},
            "split": {"by": by, "val": 0.2, "test": 0.25, "block_size": 32, "seed": 1},
        }
    )
    store = make_chips(run, cfg, tmp_path / "out")
    idx = store.index()
    assert set(idx["scene"]) == {"s0", "s1", "s2"}
    assert set(idx["split"]) == {"train", "val", "test"}
    for name in ("s0", "s1", "s2"):
        sub = idx[idx["scene"] == name]
        if by == "scene":  # a scene lies whole in one split
            assert sub["split"].nunique() == 1
        else:
            assert sub["split"].nunique() >= 2
        cover = {
            s: _covered(
                sub.loc[sub["split"] == s, "row"].to_numpy(), sub.loc[sub["split"] == s, "col"].to_numpy(), 32
            )
            for s in ("train", "val", "test")
        }
        assert not cover["train"] & cover["test"] and not cover["train"] & cover["val"]
        assert not cover["val"] & cover["test"]
    if by == "scene":
        assert sorted(idx.groupby("scene")["split"].first()) == ["test", "train", "val"]
    check_store(store)  # per scene: pixel offsets of two scenes never compared
    # georeferencing: each chip's transform and pixels are those of its own scene
    g = zarr.open_group(str(store.zarr_path), mode="r")
    for chip in (0, len(idx) // 2, len(idx) - 1):
        r = idx.iloc[chip]
        part = PreparedScene.load(tmp_path / "out" / "prepared" / r["scene"])
        t = part.grid.transform
        assert list(g["transform"][chip]) == pytest.approx(
            [t.a, 0, t.c + r["col"] * t.a, 0, t.e, t.f + r["row"] * t.e]
        )
        with rasterio.open(part.image) as src:
            want = src.read(window=((r["row"], r["row"] + 32), (r["col"], r["col"] + 32)))
        np.testing.assert_array_equal(np.asarray(g["image"][chip]), want)
        assert r.geometry.bounds[0] == pytest.approx(t.c + r["col"] * t.a)
    assert json.loads((store.root / "chips.json").read_text())["split_by"] == by
    pts = store.points()  # the point sample: scene named, pixel and coordinates of that scene
    assert set(pts["scene"]) <= {"s0", "s1", "s2"} and len(pts) > 0
    for p in pts.itertuples():
        t = PreparedScene.load(tmp_path / "out" / "prepared" / str(p.scene)).grid.transform
        assert p.geometry.x == pytest.approx(t.c + (p.col + 0.5) * t.a)
        assert p.geometry.y == pytest.approx(t.f + (p.row + 0.5) * t.e)
        with rasterio.open(tmp_path / "out" / "prepared" / str(p.scene) / "labels.tif") as src:
            assert src.read(1, window=((p.row, p.row + 1), (p.col, p.col + 1)))[0, 0] == p.label


def test_split_by_scene_needs_a_scene_per_split(three: list[dict[str, object]], tmp_path: Path) -> None:
    run = prepare(_inputs(three[:2]), tmp_path / "out")
    cfg = ChipsConfig.model_validate({"size": 32, "split": {"by": "scene", "val": 0.2, "test": 0.2}})
    with pytest.raises(
        InputError, match="no scene goes to '(train|val)' \\(s0: .*give at least one scene per split"
    ):
        make_chips(run, cfg, tmp_path / "out")


def test_leakage_across_overlapping_scenes() -> None:
    """Chips of two scenes that cover the same ground in different splits leak; touching edges do not."""
    idx = gpd.GeoDataFrame(
        {"scene": ["a", "b", "b"], "split": ["train", "test", "test"]},
        geometry=[box(0, 0, 320, 320), box(320, 0, 640, 320), box(100, 100, 420, 420)],
        crs=CRS,
    )
    with pytest.raises(
        DataError, match="scenes a and b overlap on the ground.*chips 0 \\(train\\) and 2 \\(test\\)"
    ):
        check_across_scenes(idx, where="x")
    check_across_scenes(idx.iloc[:2], where="x")


def test_run_three_scenes_maps_and_metrics_per_scene(three: list[dict[str, object]], tmp_path: Path) -> None:
    from eoforge.cli import main

    cfg = {
        "inputs": {"scenes": three, "bands": ["red", "nir"], "classes": {1: "a", 2: "b", 3: "c"}},
        "chips": {"size": 32, "stride": 32, "split": {"val": 0.2, "test": 0.25, "block_size": 32, "seed": 1}},
        "model": {"arch": "pixel-mlp", "encoder": "t1-w16"},
        "train": {"epochs": 2, "batch_size": 8, "num_workers": 0, "lr": 0.01},
        "predict": {"tile": 64, "overlap": 16},
        "evaluate": {"bootstrap": 20, "rf_pixels": 500, "insight_chips": 2},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    main(["-q", "run", str(path), "--out", str(out)])
    assert not (out / "map.tif").exists()
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["scenes"]) == {"s0", "s1", "s2"}
    total = np.zeros_like(np.array(m["confusion_matrix"]))
    for k, name in enumerate(("s0", "s1", "s2")):
        with rasterio.open(out / "maps" / f"{name}.tif") as src:  # one map per scene, on its own grid
            assert src.transform.c == 500_000.0 + 5_000 * k and src.shape == (SIZE, SIZE)
        assert (out / "eval" / name / "test_pixels.tif").is_file()
        total += np.array(m["scenes"][name]["confusion_matrix"])
        rf = [b for b in m["scenes"][name]["baselines"] if b["kind"] == "random_forest"]
        assert len(rf) == 1
    np.testing.assert_array_equal(total, np.array(m["confusion_matrix"]))  # scenes sum to overall
    assert sum(m["scenes"][n]["pixels"] for n in m["scenes"]) == m["pixels"]
    html = (out / "report.html").read_text()
    assert 'id="scenes"' in html and ">s2<" in html
    # a second run finds every stage up to date (maps/<scene>.tif are the predict stage's outputs)
    state = json.loads((out / "stages.json").read_text())
    main(["-q", "run", str(path), "--out", str(out)])
    assert json.loads((out / "stages.json").read_text()) == state


@given(
    parts=st.lists(
        st.integers(1, 40).flatmap(lambda n: arrays(np.float64, (2, n), elements=st.floats(-1e3, 1e3))),
        min_size=1,
        max_size=4,
    )
)
@settings(max_examples=60, deadline=None)
def test_pooled_band_statistics_equal_one_pass(parts: list[np.ndarray]) -> None:
    """Merging per-scene statistics gives the statistics of all pixels at once (pooled normalisation)."""
    from eoforge.prepare.stats import BandStats

    pooled = BandStats(2)
    for p in parts:
        one = BandStats(2)
        one.update(p)
        pooled.merge(BandStats.from_json(one.to_json()))  # through scene.json's form
    every = np.concatenate(parts, axis=1)
    np.testing.assert_allclose(pooled.mean, every.mean(axis=1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pooled.std, every.std(axis=1), rtol=1e-7, atol=1e-7)
    np.testing.assert_array_equal(pooled.min, every.min(axis=1))
    assert pooled.n.tolist() == [every.shape[1]] * 2


@given(
    weights=st.lists(st.integers(1, 500), min_size=1, max_size=12),
    val=st.sampled_from([0.0, 0.1, 0.2]),
    test=st.sampled_from([0.1, 0.2, 0.3]),
    seed=st.integers(0, 50),
)
@settings(max_examples=150, deadline=None)
def test_scene_split_gives_every_split_a_scene_or_says_why(
    weights: list[int], val: float, test: float, seed: int
) -> None:
    from eoforge.chips.make import _scene_splits
    from eoforge.config import SplitConfig

    sp = SplitConfig(val=val, test=test, seed=seed, by="scene")
    names = [f"s{i}" for i in range(len(weights))]
    wanted = 2 + (val > 0)  # train, test, and val when it has a fraction
    try:
        codes = _scene_splits(np.asarray(weights), names, sp)
    except InputError as exc:  # one line naming the starved split and every scene's draw
        assert "no scene goes to" in str(exc) and "chips.split.by: block" in str(exc)
        assert all(f"{n}: " in str(exc) for n in names)
        return
    assert len(weights) >= wanted  # fewer scenes than splits can never pass
    assert codes.shape == (len(weights),) and set(codes.tolist()) <= {0, 1, 2}
    assert {0, 2} <= set(codes.tolist()) and (val == 0.0 or 1 in codes.tolist())
    # the same draw as spatial blocks: seeded, so a second call agrees
    np.testing.assert_array_equal(codes, _scene_splits(np.asarray(weights), names, sp))
