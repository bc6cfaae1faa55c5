"""End to end on a hand-written config: single-band files stacked, polygon labels with class names."""

from __future__ import annotations

import csv
import json
import shutil
import time
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


def _small_run(d: Path) -> dict:
    """A config of the striped scene in ``d`` that runs every stage in seconds (1 epoch, 16 chips)."""
    return {
        "inputs": {
            "images": [str(d / f"band{i}.tif") for i in (1, 2, 3)],
            "labels": {"path": str(d / "labels.gpkg"), "column": "cover"},
            "classes": {1: "water", 2: "forest", 3: "field"},
        },
        "chips": {"size": 32, "stride": 32, "split": {"val": 0.2, "test": 0.2, "block_size": 64}},
        "train": {"epochs": 1, "batch_size": 8},
        "predict": {"tile": 64, "overlap": 16},
    }


def test_run_resumes_and_reruns_only_what_the_config_changes(striped: dict, tmp_path: Path) -> None:
    from eoforge.config import parse_config
    from eoforge.pipeline import run

    raw = _small_run(striped["dir"])
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


def _ran(raw: dict, out: Path) -> list[str]:
    """Run ``raw`` into ``out``; the stages that ran (not skipped as up to date)."""
    from eoforge.config import parse_config
    from eoforge.pipeline import run

    seen: list[tuple[str, bool]] = []
    run(parse_config(raw), out, on_stage=lambda s, skipped: seen.append((s, skipped)))
    return [s for s, skipped in seen if not skipped]


def _tree(root: Path, skip: tuple[str, ...] = (".eoforge.lock",)) -> dict[str, bytes]:
    """Every file under ``root`` by its path relative to it, with its bytes (``skip``: file names left out)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in skip
    }


ALL_STAGES = ["prepare", "chips", "train", "predict", "evaluate"]


def test_a_moved_run_folder_reruns_nothing_and_names_no_old_path(striped: dict, tmp_path: Path) -> None:
    """`mv runs/a runs/b`: the run in b finds every stage up to date and leaves its files as they were; no
    output names the folder it was written in (Lightning's checkpoints aside: train maps their paths)."""
    raw = _small_run(striped["dir"])
    a, b = tmp_path / "runs" / "a", tmp_path / "runs" / "b"
    assert _ran(raw, a) == ALL_STAGES
    before = _tree(a)
    shutil.move(a, b)
    assert not a.exists()
    assert _ran(raw, b) == []
    assert _tree(b) == before
    assert [k for k, v in before.items() if str(a).encode() in v and not k.endswith(".ckpt")] == []


def test_a_copied_run_folder_reads_nothing_from_the_original(striped: dict, tmp_path: Path) -> None:
    """`cp -a runs/a runs/c` while runs/a stays: c is up to date, and what re-runs in c reads c's files (a's
    are emptied after the copy: any read of them would fail) and writes nothing into a."""
    raw = _small_run(striped["dir"])
    a, c = tmp_path / "runs" / "a", tmp_path / "runs" / "c"
    assert _ran(raw, a) == ALL_STAGES
    shutil.copytree(a, c, copy_function=shutil.copy2)
    assert _ran(raw, c) == []
    for f in a.rglob("*"):
        if f.is_file():
            f.write_bytes(b"")
    emptied = _tree(a)
    assert _ran(raw, c) == []
    raw["predict"]["overlap"] = 8  # the map and its evaluation are redone from c's model, chips, prepared
    assert _ran(raw, c) == ["predict", "evaluate"]
    assert json.loads((c / "metrics.json").read_text())["map_window"]["overlap"] == 8
    assert _tree(a) == emptied


def test_a_copy_with_new_file_times_is_up_to_date_by_content(striped: dict, tmp_path: Path) -> None:
    """A copy that does not keep modification times (`cp -r`, scp, some file shares): outputs are compared
    by content, so nothing re-runs; the record then holds the new times. A changed byte (same size) in an
    output re-runs its stage."""
    raw = _small_run(striped["dir"])
    a, d = tmp_path / "runs" / "a", tmp_path / "runs" / "d"
    assert _ran(raw, a) == ALL_STAGES
    time.sleep(0.01)  # the copies' times differ from the originals' whatever the clock's resolution
    shutil.copytree(a, d, copy_function=shutil.copyfile)
    image = d / "prepared" / "image.tif"
    assert image.stat().st_mtime_ns != (a / "prepared" / "image.tif").stat().st_mtime_ns
    assert _ran(raw, d) == []
    assert _tree(d, skip=(".eoforge.lock", "stages.json")) == _tree(a, skip=(".eoforge.lock", "stages.json"))
    state = json.loads((d / "stages.json").read_text())
    assert state["prepare"]["outputs"]["prepared/image.tif"][1] == image.stat().st_mtime_ns
    report = d / "report.html"
    data = bytearray(report.read_bytes())
    data[len(data) // 2] ^= 1
    report.write_bytes(bytes(data))
    assert _ran(raw, d) == ["evaluate"]


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
