"""Time stacks through prepare: dates in the config, one grid, date-major channels, the Zarr view, cloudy
dates dropped, gaps kept or interpolated, and predict reading the same channels through the recipe."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import rasterio
import xarray as xr
import yaml
from conftest import CRS, TRANSFORM, write_tif
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio.windows import Window

from eoforge.config import load_config, parse_config
from eoforge.errors import InputError
from eoforge.prepare import prepare
from eoforge.prepare.dates import DatedSource, interpolate_linear, select_dates, split_dates
from eoforge.prepare.recipe import Recipe, open_source

DATES = ["2021-04-02", "2021-05-12", "2021-07-01"]
H = W = 32


def series(seed: int = 0) -> np.ndarray:
    """(time, band=2, H, W) float32 reflectances; a NaN gap on date 1 at rows 0..3."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.05, 0.5, (len(DATES), 2, H, W)).astype(np.float32)
    a[1, :, 0:4, :] = np.nan
    return a


def write_dates(tmp: Path, data: np.ndarray) -> dict[str, list[str]]:
    out = {}
    for d, arr in zip(DATES, data, strict=True):
        out[d] = [str(write_tif(tmp / f"s2_{d}.tif", arr, nodata=np.nan))]
    return out


def labels(tmp: Path) -> Path:
    lab = np.where(np.arange(W)[None, :] < W // 2, 1, 2).astype(np.uint8).repeat(H, 0)
    return write_tif(tmp / "labels.tif", lab, nodata=0)


def write_cube(tmp: Path, data: np.ndarray) -> Path:
    coords = {
        "time": np.asarray(DATES, dtype="datetime64[ns]"),
        "y": TRANSFORM.f + TRANSFORM.e * (np.arange(H) + 0.5),
        "x": TRANSFORM.c + TRANSFORM.a * (np.arange(W) + 0.5),
    }
    wkt = rasterio.crs.CRS.from_string(CRS).to_wkt()
    ds = xr.Dataset(
        {
            "red": (("time", "y", "x"), data[:, 0], {"grid_mapping": "spatial_ref"}),
            "nir": (("time", "y", "x"), data[:, 1], {"grid_mapping": "spatial_ref"}),
            "spatial_ref": ((), 0, {"crs_wkt": wkt}),
        },
        coords=coords,
    )
    path = tmp / "series.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    return path


def run_cfg(tmp: Path, images: Any = None, cube: Any = None, **prep: Any) -> Any:
    inputs: dict[str, Any] = {
        "labels": {"path": str(labels(tmp))},
        "classes": {1: "early", 2: "late"},
        "bands": ["red", "nir"],
    }
    if images is not None:
        inputs["images"] = images
    if cube is not None:
        inputs["cube"] = cube
        del inputs["bands"]
    return parse_config({"inputs": inputs, "prepare": prep})


def test_dates_in_the_yaml_config(tmp_path: Path) -> None:
    write_dates(tmp_path, series())
    labels(tmp_path)
    text = "inputs:\n  images:\n" + "".join(f"    {d}: s2_{d}.tif\n" for d in reversed(DATES))
    text += "  labels: {path: labels.tif}\n  classes: {1: early, 2: late}\n"
    (tmp_path / "run.yaml").write_text(text)
    cfg = load_config(tmp_path / "run.yaml")
    assert cfg.inputs.dates == DATES  # unquoted YAML dates, time order
    assert cfg.inputs.images[DATES[0]] == [str(tmp_path / f"s2_{DATES[0]}.tif")]  # type: ignore[index]
    bad = yaml.safe_load(text)
    bad["inputs"]["images"]["2021-13-01x"] = ["a.tif"]
    with pytest.raises(InputError, match="date '2021-13-01x' is not an ISO date"):
        parse_config(bad)
    both = yaml.safe_load(text)
    both["inputs"]["cube"] = {"path": "c.nc"}
    with pytest.raises(InputError, match="not both"):
        parse_config(both)


def test_prepare_dated_files_and_cube_give_the_same_stack(tmp_path: Path) -> None:
    data = series()
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files = write_dates(tmp_path / "a", data)
    a = prepare(run_cfg(tmp_path / "a", images=files).inputs, tmp_path / "a" / "out")
    cube = write_cube(tmp_path / "b", data)
    cfg_b = run_cfg(tmp_path / "b", cube={"path": str(cube), "variables": ["red", "nir"]})
    b = prepare(cfg_b.inputs, tmp_path / "b" / "out", prep=cfg_b.prepare)
    assert a.bands == [f"{d}/{n}" for d in DATES for n in ("red", "nir")] == b.bands
    assert a.temporal is not None and a.temporal["dates"] == DATES
    with rasterio.open(a.image) as sa, rasterio.open(b.image) as sb:
        ia, ib = sa.read(), sb.read()
        assert sa.transform == sb.transform == TRANSFORM
    np.testing.assert_array_equal(ia, data.reshape(-1, H, W))  # date-major, the gap stays NaN
    np.testing.assert_array_equal(ia, ib)
    for scene in (a, b):
        z = xr.open_zarr(scene.root / "stack.zarr")
        assert z["image"].dims == ("time", "band", "y", "x")
        assert [str(t)[:10] for t in z["time"].values] == DATES
        assert list(z["band"].values) == ["red", "nir"]
        np.testing.assert_array_equal(z["image"].values, data)
        assert z["x"].values[0] == TRANSFORM.c + 5
    # predict reads the raw files through the recipe: the same channels
    meta = SimpleNamespace(recipe=a.recipe)
    with open_source(meta, [f"{d}={p[0]}" for d, p in files.items()]) as src:
        np.testing.assert_array_equal(src.read(Window(3, 2, 8, 9)), ia[:, 2:11, 3:11])
    with pytest.raises(InputError, match="time stack of 3 dates"):
        open_source(meta, [files[DATES[0]][0]])


def test_cloudy_date_dropped_and_gaps_interpolated(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = series()
    data[2, :, :20, :] = np.nan  # date 2: 37.5 % valid
    files = write_dates(tmp_path, data)
    cfg = run_cfg(tmp_path, images=files, min_valid_date=0.5, interpolate="linear")
    lg = logging.getLogger("eoforge")  # the CLI (run by other tests) may stop eoforge records reaching root
    lg.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="eoforge"):
            scene = prepare(cfg.inputs, tmp_path / "out", prep=cfg.prepare)
    finally:
        lg.removeHandler(caplog.handler)
    assert "date 2021-07-01 dropped" in caplog.text and "interpolation" in caplog.text
    assert scene.temporal is not None
    assert scene.temporal["dates"] == DATES[:2]
    assert scene.temporal["dropped_dates"] == {"2021-07-01": 0.375}
    assert scene.temporal["interpolate"] == "linear"
    with rasterio.open(scene.image) as src:
        img = src.read()
    assert img.shape == (4, H, W) and not np.isnan(img).any()
    np.testing.assert_array_equal(img[2:4, 0:4], data[0, :, 0:4])  # the gap takes the nearest date
    data[0, :, 30:, :] = np.nan  # now no date is complete
    files = write_dates(tmp_path, data)
    strict = run_cfg(tmp_path, images=files, min_valid_date=1.0)
    with pytest.raises(InputError, match="every date is below it.*2021-04-02 0.94"):
        prepare(strict.inputs, tmp_path / "o2", prep=strict.prepare)


def test_date_selection_and_strings() -> None:
    assert split_dates(["2021-04-02=a.tif", ["2021-04-02=b.tif", "2021-04-02=c.tif"]]) == {
        "2021-04-02": ["a.tif", ["b.tif", "c.tif"]]
    }
    assert split_dates(["a.tif"]) is None
    with pytest.raises(InputError, match="no date while other images are dated"):
        split_dates(["2021-04-02=a.tif", "b.tif"])
    assert select_dates(DATES[:2], DATES, "x") == DATES[:2]
    assert select_dates(DATES, ["2022-01-01", "2022-03-01", "2022-02-01"], "x")[1] == "2022-02-01"
    with pytest.raises(InputError, match="date\\(s\\) 2021-07-01 are not given"):
        select_dates(DATES, DATES[:2], "x")
    with pytest.raises(InputError, match="needs a recipe with dates"):
        DatedSource(Recipe(bands=("red",)), ["a.tif"])


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, (6, 3), elements=st.one_of(st.just(np.nan), st.floats(-5, 5))),
    st.lists(st.integers(1, 40), min_size=5, max_size=5),
)
def test_linear_interpolation_matches_numpy(values: np.ndarray, steps: list[int]) -> None:
    days = np.concatenate([[0.0], np.cumsum(steps)]).astype(np.float64)
    out = interpolate_linear(values.copy(), days)
    for j in range(values.shape[1]):
        ok = ~np.isnan(values[:, j])
        if not ok.any():
            assert np.isnan(out[:, j]).all()
            continue
        want = np.interp(days, days[ok], values[ok, j])  # np.interp keeps the end values: nearest date
        np.testing.assert_allclose(out[:, j], want, rtol=1e-9, atol=1e-9)


def test_a_scene_of_many_has_dates(tmp_path: Path) -> None:
    data = series()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    scenes = [
        {"name": n, "images": write_dates(tmp_path / n, data), "labels": {"path": str(labels(tmp_path / n))}}
        for n in ("a", "b")
    ]
    cfg = parse_config(
        {"inputs": {"scenes": scenes, "classes": {1: "early", 2: "late"}, "bands": ["red", "nir"]}}
    )
    assert [sub.dates for _, sub in cfg.inputs.scene_inputs()] == [DATES, DATES]
    run = prepare(cfg.inputs, tmp_path / "out", prep=cfg.prepare)
    assert run.scenes == ["a", "b"] and len(run.bands) == 6
    for name, part in run.parts():
        assert part.temporal is not None and part.temporal["dates"] == DATES, name
        assert xr.open_zarr(part.root / "stack.zarr")["image"].shape == (3, 2, H, W)
