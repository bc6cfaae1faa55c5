"""The Slovenia multi-date example's preparation on the real sample: the cloudy dates are dropped by valid
fraction, NDVI is computed per date, and the stack opens with xarray (needs $EOFORGE_SAMPLES)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
import xarray as xr

from eoforge.config import parse_config
from eoforge.prepare import prepare

SAMPLE = Path(os.environ.get("EOFORGE_SAMPLES", "/nonexistent")) / "eolearn-slovenia-s2"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason="needs $EOFORGE_SAMPLES/eolearn-slovenia-s2")


def example() -> object:
    path = Path(__file__).parents[1] / "examples" / "slovenia_multidate.py"
    spec = importlib.util.spec_from_file_location("slovenia_multidate", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_slovenia_clear_dates(tmp_path: Path) -> None:
    ex: object = example()
    files = ex.masked_inputs(SAMPLE, tmp_path / "inputs")  # type: ignore[attr-defined]
    cfg = parse_config(ex.config(files, SAMPLE, "tempcnn", 1, tmp_path / "single.tif"))  # type: ignore[attr-defined]
    scene = prepare(cfg.inputs, tmp_path / "run", prep=cfg.prepare)
    assert scene.temporal is not None
    assert scene.temporal["dates"] == ["2015-07-11", "2015-08-30", "2015-09-09"]
    assert set(scene.temporal["dropped_dates"]) == {"2015-07-31", "2015-08-20"}
    assert len(scene.bands) == 3 * 14 and scene.bands[13] == "2015-07-11/NDVI"
    z = xr.open_zarr(scene.root / "stack.zarr")
    assert z["image"].shape == (3, 14, 101, 100)
    with rasterio.open(SAMPLE / "derived" / "s2l1c_2015-08-30.tif") as src:
        red, nir = src.read(4), src.read(8)
    ndvi = z["image"].sel(band="NDVI").values[1]
    np.testing.assert_allclose(ndvi, (nir - red) / (nir + red), rtol=1e-5, atol=1e-6)
