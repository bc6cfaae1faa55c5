"""The CLI: bad input is one line on stderr, exit code 2, no traceback, no half-written output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import write_tif
from helpers import identity_package

from eoforge.cli import main
from eoforge.errors import InputError


def _config(tmp_path: Path, scene: dict, **inputs: object) -> Path:
    cfg = {
        "inputs": {
            "images": [p.name for p in scene["images"]],
            "labels": {"path": "labels.gpkg", "column": "cover"},
            "classes": scene["classes"],
            **inputs,
        },
        "chips": {"size": 32, "stride": 16, "split": {"block_size": 32}},
    }
    path = scene["dir"] / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def test_missing_image(tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, scene, images=["band1.tif", "band9.tif"])
    err = _fails(["prepare", str(cfg), "--out", str(tmp_path / "out")], capsys)
    assert "band9.tif: file not found" in err
    assert not (tmp_path / "out" / "prepared").exists()


def test_unknown_classes_are_listed(tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, scene, classes={1: "water", 2: "forest"})
    err = _fails(["prepare", str(cfg), "--out", str(tmp_path / "out")], capsys)
    assert "labels.gpkg: label values not listed in classes: 'field'" in err


def test_missing_label_column(tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, scene, labels={"path": "labels.gpkg", "column": "klass"})
    err = _fails(["prepare", str(cfg), "--out", str(tmp_path / "out")], capsys)
    assert "no column 'klass' (columns: cover)" in err


def test_config_typos_are_named(tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, scene)
    raw = yaml.safe_load(cfg.read_text())
    raw["train"] = {"epoch": 3}
    cfg.write_text(yaml.safe_dump(raw))
    err = _fails(["run", str(cfg), "--out", str(tmp_path / "out")], capsys)
    assert "train.epoch: Extra inputs are not permitted" in err


def test_predict_band_mismatch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img = write_tif(tmp_path / "img.tif", np.zeros((3, 40, 40), np.float32))
    pkg = identity_package(tmp_path / "model", bands=2)
    err = _fails(["predict", str(pkg), str(img), "-o", str(tmp_path / "map.tif")], capsys)
    assert "img.tif: the image stack has 3 bands but the model was trained on 2" in err
    assert not (tmp_path / "map.tif").exists()


def test_unreadable_raster_in_a_real_process(tmp_path: Path, scene: dict) -> None:
    (scene["dir"] / "broken.tif").write_bytes(b"\x00" * 100)
    cfg = _config(tmp_path, scene, images=["band1.tif", "broken.tif"])
    proc = subprocess.run(
        [sys.executable, "-m", "eoforge.cli", "prepare", str(cfg), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "broken.tif: not a readable raster" in proc.stderr
    assert len(proc.stderr.splitlines()) == 1
    assert not (tmp_path / "out" / "prepared").exists()


def test_stages_one_by_one(tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str]) -> None:
    """prepare, chips, train and evaluate as separate commands over one run folder."""
    cfg = _config(tmp_path, scene)
    raw = yaml.safe_load(cfg.read_text())
    raw["chips"] = {
        "size": 32,
        "stride": 8,
        "min_valid": 0.3,
        "split": {"val": 0.25, "test": 0.25, "block_size": 32},
    }
    raw["train"] = {"epochs": 1, "batch_size": 4, "precision": "bf16-mixed"}  # the CPU AMX path
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    main(["-q", "prepare", str(cfg), "--out", str(out)])
    assert (out / "prepared" / "scene.json").is_file() and (out / "config.yaml").is_file()
    main(["-q", "chips", str(cfg), "--out", str(out)])
    assert (out / "chips" / "index.parquet").is_file()
    main(["-q", "train", str(cfg), "--out", str(out)])
    assert (out / "model" / "model.safetensors").is_file() and (out / "train" / "metrics.csv").is_file()
    capsys.readouterr()
    main(["-q", "evaluate", str(cfg), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "overall_accuracy" in printed
    assert (out / "metrics.json").is_file() and (out / "model" / "metrics.json").is_file()


def test_stage_out_of_order_says_what_to_run(
    tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    err = _fails(["chips", str(_config(tmp_path, scene)), "--out", str(tmp_path / "empty")], capsys)
    assert "scene.json: not found; run `eoforge prepare` first" in err


def test_models_lists_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    main(["models"])
    assert "unet" in capsys.readouterr().out.split()


def test_run_takes_workers_and_scheduler(
    tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _config(tmp_path, scene)
    raw = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**raw, "compute": {"connect_timeout": 1}}))
    out = tmp_path / "out"
    # --scheduler reaches the prepare stage (the first on Dask), keeping the config's other compute keys
    err = _fails(["-q", "run", str(path), "-o", str(out), "--scheduler", "tcp://127.0.0.1:9"], capsys)
    assert "tcp://127.0.0.1:9: cannot reach the Dask scheduler" in err
    assert not (out / "prepared").exists() and not (out / "chips").exists()
    err = _fails(
        ["run", str(path), "-o", str(out), "--scheduler", "tcp://127.0.0.1:9", "--workers", "2"], capsys
    )
    assert "--scheduler/--workers: " in err and "not both" in err
    _fails(["-q", "run", str(path), "-o", str(out), "--workers", "0"], capsys)
    seen = []

    def fake_run(cfg: object, out: Path, **kwargs: object) -> None:
        seen.append(cfg)
        raise InputError("stopped here")

    monkeypatch.setattr("eoforge.pipeline.run", fake_run)
    assert "stopped here" in _fails(["-q", "run", str(path), "-o", str(out), "--workers", "3"], capsys)
    compute = seen[0].compute  # type: ignore[attr-defined]
    assert (compute.workers, compute.scheduler, compute.connect_timeout) == (3, None, 1.0)
