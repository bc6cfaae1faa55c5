"""Scene classification: chip listings (folder per class, CSV, BigEarthNet), single- and multi-label training."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tif

from eoforge.errors import InputError
from eoforge.scene.fit import create_classifier, evaluate_scene, train_scene
from eoforge.scene.samples import list_csv, list_folder_per_class, list_samples, read_chip
from eoforge.tasks import TASKS, get_task


def eurosat(root: Path, n: int = 12) -> Path:
    """Two classes of 3-band 16 px chips: 'bright' (band 1 high) and 'dark' (band 1 low)."""
    rng = np.random.default_rng(0)
    for cls, level in (("bright", 3000), ("dark", 500)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            data = rng.normal(1000, 100, (3, 16, 16))
            data[1] += level
            write_tif(root / cls / f"{cls}_{i}.tif", data.astype(np.uint16))
    return root


def test_folder_per_class_trains_single_label(tmp_path: Path) -> None:
    samples = list_samples(eurosat(tmp_path / "eurosat"))
    assert samples.classes == ("bright", "dark") and not samples.multilabel
    assert read_chip(samples.samples[0], 32).shape == (3, 32, 32)
    idx = np.arange(len(samples.samples))
    train, test = idx[idx % 3 != 0], idx[idx % 3 == 0]
    fitted = train_scene(samples, train, arch="resnet10t", size=32, epochs=3, batch_size=8, lr=3e-3)
    m = evaluate_scene(fitted, samples, test)
    assert m["accuracy"] == 1.0 and m["n"] == len(test)


def test_csv_multilabel_metrics(tmp_path: Path) -> None:
    root = eurosat(tmp_path / "chips", n=4)
    rows = ["path,label"] + [
        f"{p.relative_to(tmp_path).as_posix()},{'water;' if i % 2 else ''}{p.parent.name}"
        for i, p in enumerate(sorted(root.glob("*/*.tif")))
    ]
    (tmp_path / "chips.csv").write_text("\n".join(rows) + "\n")
    samples = list_csv(tmp_path / "chips.csv")
    assert samples.multilabel and samples.classes == ("bright", "dark", "water")
    t = samples.targets()
    assert t.shape == (8, 3) and t.sum(1).tolist() == [1, 2] * 4
    idx = np.arange(8)
    fitted = train_scene(samples, idx, arch="resnet10t", size=32, epochs=1, batch_size=4)
    m = evaluate_scene(fitted, samples, idx)
    assert set(m["f1_per_label"]) == {"bright", "dark", "water"} and 0 <= m["map"] <= 1


def test_tasks_and_errors(tmp_path: Path) -> None:
    ml = get_task("scene-multilabel")
    logits = torch.tensor([[2.0, -2.0, 0.1]])
    assert ml.predict(logits).tolist() == [[1, 0, 1]]
    assert get_task("scene").predict(logits).tolist() == [0]
    m = ml.metrics(3)
    m.update(ml.scores(torch.tensor([[5.0, -5, -5], [-5, 5, 5]])), torch.tensor([[1, 0, 0], [0, 1, 1]]))
    assert float(m.compute()["map"]) == pytest.approx(1.0)
    assert get_task("pixel").min_labelled_pixels(32, 0.5) == 1
    assert get_task("segmentation").min_labelled_pixels(32, 0.5) == 512
    assert isinstance(TASKS["segmentation"].loss(), torch.nn.CrossEntropyLoss)
    with pytest.raises(InputError, match="unknown task 'foo'; choose one of: segmentation"):
        get_task("foo")
    with pytest.raises(InputError, match="unknown timm classifier 'resnet999'"):
        create_classifier("resnet999", 3, 2)
    with pytest.raises(InputError, match="no labelled chips"):
        list_folder_per_class(tmp_path)


SAMPLES = os.environ.get("EOFORGE_SAMPLES")


@pytest.mark.skipif(not SAMPLES, reason="EOFORGE_SAMPLES is not set (real EO samples)")
def test_bigearthnet_tiny_end_to_end() -> None:
    samples = list_samples(Path(str(SAMPLES)) / "bigearthnet-tiny" / "s2-tiny")
    assert samples.multilabel and len(samples.samples) == 3 and "Pastures" in samples.classes
    chip = read_chip(samples.samples[0], 120)
    assert chip.shape == (12, 120, 120) and np.isfinite(chip).all()
    idx = np.arange(3)
    fitted = train_scene(samples, idx, arch="resnet10t", size=64, epochs=1, batch_size=3)
    m = evaluate_scene(fitted, samples, idx)
    assert set(m["f1_per_label"]) == set(samples.classes) and 0 <= m["map"] <= 1


def test_predict_windows_coarse_raster_and_geoparquet(tmp_path: Path) -> None:
    import geopandas as gpd
    import rasterio

    from eoforge.scene.predict import predict_windows

    samples = list_samples(eurosat(tmp_path / "eurosat"))
    idx = np.arange(len(samples.samples))
    fitted = train_scene(samples, idx, arch="resnet10t", size=32, epochs=3, batch_size=8, lr=3e-3)
    # a scene: left half 'bright' texture, right half 'dark', 2 x 4 windows of 16 px (+ an edge strip)
    rng = np.random.default_rng(1)
    scene = rng.normal(1000, 100, (3, 32, 70))
    scene[1, :, :32] += 3000
    scene[1, :, 32:] += 500
    img = write_tif(tmp_path / "scene.tif", scene.astype(np.uint16))
    res = predict_windows(fitted, img, tmp_path / "labels.tif", tmp_path / "windows.parquet", window=16)
    assert res.n_windows == 8
    with rasterio.open(res.raster) as src, rasterio.open(img) as full:
        assert src.shape == (2, 4) and src.transform.a == 16 * full.transform.a
        assert src.transform.c == full.transform.c and src.crs == full.crs
        assert src.read(1).tolist() == [[0, 0, 1, 1], [0, 0, 1, 1]]
    gdf = gpd.read_parquet(res.windows)
    assert len(gdf) == 8 and {"score_bright", "score_dark", "label"} <= set(gdf.columns)
    assert gdf.geometry.iloc[0].bounds[0] == full.transform.c
    np.testing.assert_allclose(gdf["score_bright"] + gdf["score_dark"], 1, atol=1e-5)
