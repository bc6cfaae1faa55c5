"""Point labels on a time stack: `eoforge run` with `task: pixel`, a GeoPackage of points and a TempCNN maps two
phenologies (same temporal mean, different timing) over the whole scene, not only at the points."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import yaml
from conftest import CRS, TRANSFORM, write_tif
from shapely.geometry import Point

from eoforge.cli import main

DATES = ["2021-04-01", "2021-06-01", "2021-08-01"]
N = 96
NIR = {1: [0.6, 0.3, 0.3], 2: [0.3, 0.3, 0.6]}  # early / late green-up: both average 0.4 over the season


def scene(tmp: Path) -> tuple[dict[str, list[str]], np.ndarray]:
    """Dated red/nir files over 8-px squares of either class, and the true class ids (1/2) per pixel."""
    rng = np.random.default_rng(3)
    cls = rng.integers(1, 3, (N // 8, N // 8)).repeat(8, 0).repeat(8, 1)
    files = {}
    for t, d in enumerate(DATES):
        nir = np.where(cls == 1, NIR[1][t], NIR[2][t]) + rng.normal(0, 0.03, cls.shape)
        red = 0.35 - 0.4 * nir + rng.normal(0, 0.02, cls.shape)
        files[d] = [str(write_tif(tmp / f"s2_{d}.tif", np.stack([red, nir]).astype(np.float32)))]
    return files, cls


def test_point_labels_train_tempcnn_through_run(tmp_path: Path) -> None:
    files, truth = scene(tmp_path)
    rng = np.random.default_rng(4)
    flat = rng.choice(N * N, 900, replace=False)  # 900 labelled pixels of 9216 (10 %)
    rows, cols = flat // N, flat % N
    xy = [TRANSFORM * (c + 0.5, r + 0.5) for r, c in zip(rows, cols, strict=True)]
    points = gpd.GeoDataFrame({"crop": truth[rows, cols]}, geometry=[Point(x, y) for x, y in xy], crs=CRS)
    points.to_file(tmp_path / "points.gpkg")
    cfg = {
        "task": "pixel",
        "inputs": {
            "images": files,
            "bands": ["red", "nir"],
            "labels": {"path": "points.gpkg", "column": "crop"},
            "classes": {1: "early", 2: "late"},
        },
        "chips": {"size": 32, "stride": 32, "split": {"val": 0.2, "test": 0.2, "block_size": 32}},
        "model": {"arch": "tempcnn", "encoder": "w16"},
        "train": {"epochs": 3, "batch_size": 8, "lr": 0.01, "augment": None, "num_workers": 0},
        "predict": {"tile": 64, "overlap": 16},
        "evaluate": {"bootstrap": 0, "insight_chips": 0, "rf_pixels": 500},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    main(["-q", "run", str(tmp_path / "run.yaml"), "--out", str(out)])

    with rasterio.open(out / "prepared" / "labels.tif") as src:
        labels = src.read(1)
    assert int((labels != 255).sum()) == 900  # sparse: the points only, every other pixel unlabelled
    np.testing.assert_array_equal(labels[rows, cols], truth[rows, cols] - 1)
    meta = json.loads((out / "model" / "eoforge.json").read_text())
    assert meta["task"] == "pixel" and meta["arch"] == "tempcnn" and meta["encoder"] == "t3-w16"
    assert meta["recipe"]["dates"] == DATES and len(meta["bands"]) == 6
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert summary["task"] == "pixel" and summary["monitor"] == "val_miou"

    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["pixels"] < 900 * 0.5  # the test points of the test blocks
    assert metrics["overall_accuracy"] > 0.9, metrics["overall_accuracy"]
    with rasterio.open(out / "map.tif") as src:
        mapped = src.read(1)
    # the whole scene, not only the labelled points: the two timings are told apart everywhere
    assert float((mapped == truth).mean()) > 0.9
    for k in (1, 2):
        assert float((mapped[truth == k] == k).mean()) > 0.85
