"""NetCDF / Zarr cubes: dates, bands, grid and windows round-trip; the cube stays lazy (dask)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from eoforge.errors import InputError
from eoforge.temporal.cube import open_cube

DATES = np.array(["2021-04-02", "2021-05-12", "2021-07-01"], dtype="datetime64[ns]")


def cube_dataset() -> xr.Dataset:
    t, h, w = 3, 8, 6
    red = np.arange(t * h * w, dtype=np.float32).reshape(t, h, w)
    nir = red + 1000
    red[1, 2, 3] = np.nan
    coords = {
        "time": DATES,
        "y": 5000000.0 - 10 * (np.arange(h) + 0.5),
        "x": 500000.0 + 10 * (np.arange(w) + 0.5),
    }
    return xr.Dataset({"red": (("time", "y", "x"), red), "nir": (("time", "y", "x"), nir)}, coords=coords)


@pytest.mark.parametrize("kind", ["nc", "zarr"])
def test_cube_round_trip(tmp_path: Path, kind: str) -> None:
    ds = cube_dataset()
    path = tmp_path / f"series.{kind}"
    if kind == "nc":
        ds.to_netcdf(path, engine="h5netcdf")
    else:
        ds.to_zarr(path)
    cube = open_cube(path, variables=["red", "nir"])
    assert cube.data.chunks is not None  # dask-backed: nothing read yet
    assert cube.dates.tolist() == DATES.astype("datetime64[D]").tolist()
    assert cube.bands == ("red", "nir") and cube.shape == (3, 2, 8, 6)
    assert cube.transform.a == 10 and cube.transform.c == 500000 and cube.transform.f == 5000000
    win = cube.read_window(1, 2, 3, 2)
    assert win.shape == (3, 2, 3, 2)
    np.testing.assert_array_equal(win[:, 1], ds["nir"].values[:, 1:4, 2:4])
    assert np.isnan(win[1, 0, 1, 1])  # the gap stays a gap
    ch = cube.channels(0, 0, 2, 2)
    np.testing.assert_array_equal(ch[3], ds["nir"].values[1, :2, :2])  # date-major: date 1, band 1


def test_cube_errors(tmp_path: Path) -> None:
    path = tmp_path / "c.nc"
    cube_dataset().to_netcdf(path, engine="h5netcdf")
    with pytest.raises(InputError, match="variables \\['swir'\\] not in the cube"):
        open_cube(path, variables=["swir"])
    with pytest.raises(InputError, match="no time dimension 'date'"):
        open_cube(path, time="date")
    with pytest.raises(InputError, match="outside"):
        open_cube(path).read_window(6, 0, 4, 4)
    with pytest.raises(InputError, match="cube not found"):
        open_cube(tmp_path / "missing.nc")
