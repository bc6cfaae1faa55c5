"""Masks given by path for one date of a time stack (`inputs.masks[].date`): a pixel masked on that date is a
gap (NaN) in `prepared/stack.zarr` on that date only; an undated mask masks every date. The free-space
estimate counts `stack.zarr`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml
from conftest import write_tif

from eoforge.config import load_config
from eoforge.errors import InputError
from eoforge.pipeline import space_needs
from eoforge.prepare import prepare

DATES = ["2021-04-02", "2021-05-12", "2021-07-01"]
H = W = 24


def write_inputs(tmp: Path) -> tuple[dict[str, list[str]], np.ndarray]:
    rng = np.random.default_rng(0)
    data = rng.uniform(0.05, 0.5, (len(DATES), 2, H, W)).astype(np.float32)
    files = {d: [str(write_tif(tmp / f"s2_{d}.tif", a))] for d, a in zip(DATES, data, strict=True)}
    lab = np.where(np.arange(W)[None, :] < W // 2, 1, 2).astype(np.uint8).repeat(H, 0)
    write_tif(tmp / "labels.tif", lab, nodata=0)
    return files, data


def cloud_mask(tmp: Path, name: str, pixels: list[tuple[int, int]]) -> str:
    scl = np.full((H, W), 4, np.uint8)  # vegetation
    for r, c in pixels:
        scl[r, c] = 9  # cloud
    return str(write_tif(tmp / name, scl))


def config(tmp: Path, files: dict[str, list[str]], masks: list[dict[str, object]]) -> Path:
    cfg = {
        "inputs": {
            "images": files,
            "bands": ["red", "nir"],
            "labels": {"path": "labels.tif"},
            "classes": {1: "a", 2: "b"},
            "masks": masks,
        }
    }
    path = tmp / "run.yaml"
    # dates as YAML dates (unquoted), as a user writes them
    path.write_text(yaml.safe_dump(cfg).replace("'2021-05-12'", "2021-05-12"))
    return path


def test_a_mask_of_one_date_makes_a_gap_on_that_date_only(tmp_path: Path) -> None:
    files, data = write_inputs(tmp_path)
    masks = [
        {
            "path": cloud_mask(tmp_path, "scl_0512.tif", [(3, 4), (10, 11)]),
            "classes": [9],
            "date": "2021-05-12",
        },
        {"path": cloud_mask(tmp_path, "everywhere.tif", [(20, 2)]), "classes": [9]},  # every date
    ]
    cfg = load_config(config(tmp_path, files, masks))
    assert cfg.inputs.masks[0].date == "2021-05-12"
    # the free-space estimate counts the time stack twice: image.tif and stack.zarr (6 float32 channels)
    assert space_needs(cfg, tmp_path, ["prepare"]) == {"prepare": H * W * (2 * 4 * 6 + 1)}
    scene = prepare(cfg.inputs, tmp_path / "run", prep=cfg.prepare)
    stack = xr.open_zarr(scene.root / "stack.zarr")["image"]
    assert stack.dims == ("time", "band", "y", "x") and stack.nbytes == H * W * 4 * 6
    values = stack.values  # (3, 2, 24, 24): tiny
    gaps = np.isnan(values).all(axis=1)  # (time, y, x): pixels without any band
    assert np.isnan(values).any(axis=1).sum() == gaps.sum()  # a mask removes the whole pixel
    assert sorted(zip(*np.nonzero(gaps[1]), strict=True)) == [(3, 4), (10, 11), (20, 2)]
    for t in (0, 2):  # the other dates keep these pixels, with their values
        assert sorted(zip(*np.nonzero(gaps[t]), strict=True)) == [(20, 2)]
        np.testing.assert_allclose(values[t, :, 3, 4], data[t, :, 3, 4], rtol=1e-6)
    np.testing.assert_allclose(values[1, :, 5, 5], data[1, :, 5, 5], rtol=1e-6)


def test_a_mask_date_outside_the_stack_is_refused(tmp_path: Path) -> None:
    files, _ = write_inputs(tmp_path)
    mask = {"path": cloud_mask(tmp_path, "scl.tif", [(1, 1)]), "classes": [9], "date": "2021-06-01"}
    cfg = load_config(config(tmp_path, files, [mask]))
    with pytest.raises(
        InputError, match=r"scl.tif: mask date 2021-06-01 is not among the dates of inputs.images"
    ):
        prepare(cfg.inputs, tmp_path / "run", prep=cfg.prepare)
    band_with_date = {"band": "SCL", "classes": [9], "date": "2021-05-12"}
    with pytest.raises(ValueError, match="with a mask `path`"):
        load_config(config(tmp_path, files, [band_with_date]))
