"""End to end on a hand-written config: single-band files stacked, polygon labels with class names."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from conftest import CRS, TRANSFORM, pixel_box, write_tif

from eoforge.cli import main


@pytest.fixture
def striped(tmp_path: Path) -> dict:
    """128 x 128 px, 3 single-band files: 'water' and 'forest' in 16-px stripes, 'field' squares; polygons
    hold class names. Every 32-px block holds several classes, so any split sees them all."""
    import geopandas as gpd

    rng = np.random.default_rng(0)
    rows = np.arange(128)[:, None].repeat(128, 1)
    cls = np.where((rows // 16) % 2 == 0, 0, 1)
    geoms, names = [], []
    for r in range(0, 128, 16):
        geoms.append(pixel_box(r, 0, r + 16, 128))
        names.append("water" if (r // 16) % 2 == 0 else "forest")
    for r, c in ((4, 4), (36, 68), (70, 20), (100, 100)):
        geoms.append(pixel_box(r, c, r + 12, c + 12))
        names.append("field")
        cls[r : r + 12, c : c + 12] = 2
    level = np.array([100, 1000, 500])[cls]
    for b in range(3):
        a = (level + rng.integers(0, 40, cls.shape) + 20 * b).astype(np.uint16)
        a[:4, :4] = 0
        write_tif(tmp_path / f"band{b + 1}.tif", a, nodata=0)
    gpd.GeoDataFrame({"cover": names}, geometry=geoms, crs=CRS).to_file(tmp_path / "labels.gpkg")
    return {"dir": tmp_path}


def test_run_then_predict_a_new_image(
    striped: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scene = striped
    cfg = {
        "inputs": {
            "images": ["band*.tif"],
            "bands": ["blue", "green", "red"],
            "labels": {"path": "labels.gpkg", "column": "cover"},
            "classes": {1: "water", 2: "forest", 3: "field"},
        },
        "chips": {
            "size": 32,
            "stride": 16,
            "min_valid": 0.3,
            "split": {"val": 0.2, "test": 0.2, "block_size": 64},
        },
        "model": {"arch": "unet", "encoder": "resnet18"},
        "train": {"epochs": 2, "batch_size": 4},
        "predict": {"overlap": 16, "tile": 64},
    }
    path = scene["dir"] / "scene.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    main(["-q", "run", str(path), "--out", str(out)])
    for name in (
        "map.tif",
        "metrics.json",
        "report.html",
        "config.yaml",
        "model/model.safetensors",
        "model/model.onnx",
        "model/item.json",
        "model/eoforge.json",
        "model/metrics.json",
        "model/config.yaml",
        "train/metrics.csv",
    ):
        assert (out / name).is_file(), name
    with rasterio.open(out / "map.tif") as src:
        assert src.crs.to_string() == CRS and src.transform == TRANSFORM and src.shape == (128, 128)
        m = src.read(1)
    assert set(np.unique(m)) <= {1, 2, 3, 255}
    assert (m[:4, :4] == 255).all()  # input nodata -> output nodata
    metrics = json.loads((out / "metrics.json").read_text())
    for key in (
        "overall_accuracy",
        "kappa",
        "mean_iou",
        "classes",
        "per_class",
        "confusion_matrix",
        "baseline",
    ):
        assert key in metrics
    assert set(metrics["per_class"]) == {"water", "forest", "field"}
    assert metrics["baseline"]["overall_accuracy"] > 0.95  # the bands separate the classes
    assert sum(c["support"] for c in metrics["per_class"].values()) == metrics["pixels"] > 0
    meta = json.loads((out / "model" / "eoforge.json").read_text())
    assert meta["bands"] == ["blue", "green", "red"] and [c["id"] for c in meta["classes"]] == [1, 2, 3]
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64") >= 3

    # a new image (another grid, 3 bands as one file) classified with nothing but the model folder
    new = write_tif(
        tmp_path / "new.tif",
        np.full((3, 40, 50), 120, np.uint16),
        transform=TRANSFORM @ TRANSFORM.translation(7, 3),
    )
    capsys.readouterr()
    main(["predict", str(out / "model"), str(new), "-o", str(tmp_path / "new_map.tif")])
    assert "wrote" in capsys.readouterr().out
    with rasterio.open(tmp_path / "new_map.tif") as src:
        assert src.shape == (40, 50) and src.transform == TRANSFORM * TRANSFORM.translation(7, 3)
        assert set(np.unique(src.read(1))) <= {1, 2, 3}


def test_run_resumes_and_reruns_only_what_the_config_changes(striped: dict, tmp_path: Path) -> None:
    from eoforge.config import parse_config
    from eoforge.pipeline import run

    d = striped["dir"]
    raw = {
        "inputs": {
            "images": [str(d / f"band{i}.tif") for i in (1, 2, 3)],
            "labels": {"path": str(d / "labels.gpkg"), "column": "cover"},
            "classes": {1: "water", 2: "forest", 3: "field"},
        },
        "chips": {"size": 32, "stride": 32, "split": {"val": 0.2, "test": 0.2, "block_size": 64}},
        "train": {"epochs": 1, "batch_size": 8},
        "predict": {"tile": 64, "overlap": 16},
    }
    out = tmp_path / "run"
    seen: list[tuple[str, bool]] = []
    run(parse_config(raw), out, on_stage=lambda s, skipped: seen.append((s, skipped)))
    assert not any(skipped for _, skipped in seen)
    stamp = (out / "map.tif").stat().st_mtime_ns

    seen.clear()
    again = run(parse_config(raw), out, on_stage=lambda s, skipped: seen.append((s, skipped)))
    assert all(skipped for _, skipped in seen) and len(seen) == 5
    assert (out / "map.tif").stat().st_mtime_ns == stamp
    assert again.metrics == json.loads((out / "metrics.json").read_text())

    raw["train"]["lr"] = 0.01  # training changed: data preparation is reused, the rest re-runs
    seen.clear()
    run(parse_config(raw), out, on_stage=lambda s, skipped: seen.append((s, skipped)))
    assert seen == [
        ("prepare", True),
        ("chips", True),
        ("train", False),
        ("predict", False),
        ("evaluate", False),
    ]

    (out / "chips" / "chips.json").unlink()  # a lost output re-runs its stage and every later one
    seen.clear()
    run(parse_config(raw), out, on_stage=lambda s, skipped: seen.append((s, skipped)))
    assert [s for s, skipped in seen if not skipped] == ["chips", "train", "predict", "evaluate"]


def test_run_with_two_cpu_devices_trains_in_two_spawned_ranks(striped: dict, tmp_path: Path) -> None:
    """`train.devices: 2` on CPU from a config: the train stage spawns 2 gloo ranks (ddp_spawn) that split the
    train chips; the rest of the run stays in this process and finishes (map, metrics)."""
    import os

    from eoforge.chips import ChipStore

    if (os.cpu_count() or 1) < 2:
        pytest.skip("needs 2 CPU cores (train.devices may not exceed them)")
    d = striped["dir"]
    cfg = {
        "inputs": {
            "images": [str(d / f"band{i}.tif") for i in (1, 2, 3)],
            "labels": {"path": str(d / "labels.gpkg"), "column": "cover"},
            "classes": {1: "water", 2: "forest", 3: "field"},
        },
        "chips": {"size": 32, "stride": 16, "split": {"val": 0.2, "test": 0.2, "block_size": 64}},
        "model": {"arch": "fpn", "encoder": "tu-mobilenetv3_small_050"},
        "train": {"epochs": 2, "batch_size": 2, "devices": 2, "accelerator": "cpu", "num_workers": 0},
        "predict": {"tile": 64, "overlap": 16},
    }
    path = d / "ddp.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    main(["-q", "run", str(path), "--out", str(out)])
    summary = json.loads((out / "train" / "summary.json").read_text())
    assert (summary["world_size"], summary["strategy"]) == (2, "DDPStrategy")
    assert summary["epochs_run"] == 2 and summary["best_score"] is not None
    # each rank saw half of the train chips: half the optimizer steps of one process per epoch
    n_train = len(ChipStore.load(out / "chips").splits["train"])
    with open(out / "train" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train_loss")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    per_rank = -(-n_train // 2)
    assert int(rows[0]["step"]) + 1 == per_rank // 2 < n_train // 2
    assert (out / "map.tif").is_file() and (out / "model" / "model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text())["overall_accuracy"] > 0
