from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import rasterio

from eoforge.demo import BANDS, CLASSES, SHA256, data_dir, demo_config, verify
from eoforge.errors import DataError
from eoforge.pipeline import run


def test_demo_files_are_installed_and_verified() -> None:
    folder = data_dir()
    verify(folder)
    cfg = demo_config(epochs=1)
    assert [Path(p).name for p in cfg.inputs.images] == list(BANDS)
    assert cfg.inputs.classes == CLASSES


def test_an_altered_demo_file_is_refused(tmp_path: Path) -> None:
    for name in SHA256:
        shutil.copy(data_dir() / name, tmp_path / name)
    with open(tmp_path / "strata.tif", "r+b") as f:
        f.seek(1000)
        f.write(b"\x01\x02\x03")
    with pytest.raises(DataError, match=r"strata.tif: checksum .* differs"):
        verify(tmp_path)
    (tmp_path / "lsat7_2000_10.tif").unlink()
    with pytest.raises(DataError, match="lsat7_2000_10.tif: demo file missing"):
        verify(tmp_path)


def test_demo_cycle_runs_on_the_real_scene(tmp_path: Path) -> None:
    """One epoch: the demo's data path end to end (the full demo is `make demo`)."""
    cfg = demo_config(epochs=1)
    run(cfg, tmp_path / "demo")
    with rasterio.open(tmp_path / "demo" / "map.tif") as m, rasterio.open(cfg.inputs.images[0]) as src:
        assert (m.crs, m.transform, m.shape) == (src.crs, src.transform, src.shape)
    metrics = json.loads((tmp_path / "demo" / "metrics.json").read_text())
    assert list(metrics["per_class"]) == list(CLASSES.values())
    assert metrics["baseline"]["overall_accuracy"] > 0.5
