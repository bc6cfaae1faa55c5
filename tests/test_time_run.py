"""`eoforge run` on a time stack: a temporal model separates two phenologies (same mean, different timing)
through prepare → chips (dated) → train → predict (raw DATE=FILE through the recipe) → evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
from conftest import write_tif

from eoforge.cli import main

DATES = ["2021-03-01", "2021-05-01", "2021-07-01", "2021-09-01"]
N = 96


def phenologies(tmp: Path) -> dict[str, list[str]]:
    """Class 1 greens up on the 2nd date, class 2 on the 4th; each date's mean over both classes is the same."""
    rng = np.random.default_rng(0)
    cls = rng.integers(0, 2, (N // 4, N // 4)).repeat(4, 0).repeat(4, 1)  # 4-px squares of either class
    nir_early = np.array([0.2, 0.6, 0.3, 0.2])
    nir_late = np.array([0.2, 0.3, 0.2, 0.6])
    out = {}
    for t, d in enumerate(DATES):
        nir = np.where(cls == 0, nir_early[t], nir_late[t]) + rng.normal(0, 0.04, cls.shape)
        red = 0.35 - 0.4 * nir + rng.normal(0, 0.02, cls.shape)
        out[d] = [str(write_tif(tmp / f"s2_{d}.tif", np.stack([red, nir]).astype(np.float32)))]
    write_tif(tmp / "labels.tif", (cls + 1).astype(np.uint8), nodata=0)
    return out


# L-TAE's MLP batch norms evaluate with running statistics that lag far behind after the 2 optimiser steps of
# the TempCNN setting (train-mode accuracy 1.0, eval-mode 0.82 on the val chips); 12 steps (batch 2) suffice
@pytest.mark.parametrize(("arch", "epochs", "batch"), [("tempcnn", 2, 8), ("ltae", 3, 2)])
def test_temporal_run_separates_phenologies(tmp_path: Path, arch: str, epochs: int, batch: int) -> None:
    files = phenologies(tmp_path)
    cfg = {
        "task": "pixel",
        "inputs": {
            "images": files,
            "bands": ["red", "nir"],
            "labels": {"path": "labels.tif"},
            "classes": {1: "early", 2: "late"},
        },
        "prepare": {"indices": ["NDVI"]},
        "chips": {"size": 32, "stride": 16, "split": {"val": 0.2, "test": 0.2, "block_size": 32}},
        "model": {"arch": arch, "encoder": "w16"},
        "train": {"epochs": epochs, "batch_size": batch, "lr": 0.01, "augment": None, "num_workers": 0},
        "predict": {"tile": 64, "overlap": 16},
        "evaluate": {"bootstrap": 0, "insight_chips": 0, "rf_pixels": 2000},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    main(["-q", "run", str(path), "--out", str(out)])
    scene = json.loads((out / "prepared" / "scene.json").read_text())
    assert scene["temporal"]["dates"] == DATES
    assert scene["bands"][:3] == [f"{DATES[0]}/red", f"{DATES[0]}/nir", f"{DATES[0]}/NDVI"]
    chips = xr.open_zarr(out / "chips" / "chips.zarr")
    assert chips["image"].dims == ("chip", "band", "y", "x") and chips.sizes["band"] == 12
    assert [str(t)[:10] for t in chips["time"].values[::3]] == DATES  # each channel's date
    meta = json.loads((out / "model" / "eoforge.json").read_text())
    assert meta["arch"] == arch and meta["encoder"] == "t4-w16" and meta["recipe"]["dates"] == DATES
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["overall_accuracy"] > 0.9, metrics["overall_accuracy"]
    # the packaged model on the raw dated files, outside the run: the run's own map
    dated = [f"{d}={p[0]}" for d, p in files.items()]
    main(["-q", "predict", str(out / "model"), *dated, "-o", str(tmp_path / "again.tif")])
    with rasterio.open(out / "map.tif") as a, rasterio.open(tmp_path / "again.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
