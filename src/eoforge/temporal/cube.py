"""NetCDF / Zarr cubes of dated bands, opened lazily with xarray and dask: never read whole into memory.

``open_cube`` returns a :class:`Cube` holding a dask-backed ``DataArray`` with dimensions
``(time, band, y, x)``; ``read_window`` computes only one window as ``(time, band, h, w)`` float32 with NaN at
nodata, and ``channels`` stacks it date-major ``(time * band, h, w)``, the layout of the temporal models. The
grid (affine transform, CRS) comes from regular ``x`` / ``y`` coordinates and a CF ``grid_mapping`` / ``spatial_ref``
variable when present.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine

from eoforge.errors import DataError, InputError

log = logging.getLogger(__name__)

X_NAMES = ("x", "lon", "longitude", "easting")
Y_NAMES = ("y", "lat", "latitude", "northing")


@dataclass(frozen=True)
class Cube:
    """A lazy ``(time, band, y, x)`` cube with its dates, band names and grid."""

    data: xr.DataArray
    path: Path
    transform: Affine
    crs: str | None

    @property
    def dates(self) -> np.ndarray:
        return np.asarray(self.data["time"].values).astype("datetime64[D]")

    @property
    def bands(self) -> tuple[str, ...]:
        return tuple(str(b) for b in self.data["band"].values)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        t, b, h, w = self.data.shape
        return int(t), int(b), int(h), int(w)

    def read_window(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """``(time, band, height, width)`` float32 computed for this window only (NaN at nodata)."""
        _, _, h, w = self.shape
        if row < 0 or col < 0 or row + height > h or col + width > w:
            raise InputError(
                f"{self.path}: window ({row}, {col}, {height}, {width}) lies outside the {h} x {w} cube"
            )
        sub = self.data.isel(y=slice(row, row + height), x=slice(col, col + width))
        return np.asarray(sub.values, dtype=np.float32)

    def channels(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """The window stacked date-major ``(time * band, height, width)``."""
        v = self.read_window(row, col, height, width)
        return v.reshape(-1, height, width)


def _grid(ds: xr.Dataset, xname: str, yname: str, path: Path) -> tuple[Affine, str | None]:
    xs, ys = np.asarray(ds[xname].values, float), np.asarray(ds[yname].values, float)
    if len(xs) < 2 or len(ys) < 2:
        raise DataError(f"{path}: the cube needs at least 2 x 2 pixels to know its grid")
    dx, dy = np.diff(xs), np.diff(ys)
    if not (np.allclose(dx, dx[0]) and np.allclose(dy, dy[0])):
        raise DataError(f"{path}: x / y coordinates are not regularly spaced; resample the cube onto a grid")
    transform = Affine(dx[0], 0, xs[0] - dx[0] / 2, 0, dy[0], ys[0] - dy[0] / 2)
    crs = None
    for var in ds.data_vars.values():
        gm = var.attrs.get("grid_mapping")
        if gm and gm in ds.variables:
            crs = ds[gm].attrs.get("crs_wkt") or ds[gm].attrs.get("spatial_ref")
            break
    if crs is None and "spatial_ref" in ds.variables:
        crs = ds["spatial_ref"].attrs.get("crs_wkt") or ds["spatial_ref"].attrs.get("spatial_ref")
    return transform, crs


def open_cube(
    path: str | Path,
    variables: list[str] | None = None,
    time: str = "time",
    chunks: dict[str, int] | None = None,
) -> Cube:
    """Open a NetCDF (``.nc``) or Zarr (``.zarr``) cube lazily; ``variables`` are its bands (default: all
    data variables with the time and both spatial dimensions)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: cube not found; check inputs.cube.path")
    chunk_spec = chunks or {time: 1}
    try:
        if path.suffix.lower() == ".zarr" or path.is_dir():
            ds = xr.open_zarr(path, chunks=chunk_spec)
        else:
            ds = xr.open_dataset(path, engine="h5netcdf", chunks=chunk_spec)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a readable NetCDF / Zarr cube ({str(exc).splitlines()[0]})") from None
    if time not in ds.dims:
        raise InputError(
            f"{path}: no time dimension '{time}'; dimensions are {list(ds.dims)}; set inputs.cube.time"
        )
    xname = next((n for n in X_NAMES if n in ds.dims), None)
    yname = next((n for n in Y_NAMES if n in ds.dims), None)
    if xname is None or yname is None:
        raise DataError(
            f"{path}: no x / y dimensions (looked for {X_NAMES} / {Y_NAMES}); dims are {list(ds.dims)}"
        )
    spatial = {time, xname, yname}
    if variables is None:
        variables = [str(n) for n, v in ds.data_vars.items() if set(v.dims) == spatial]
    unknown = [v for v in variables if v not in ds.data_vars]
    if unknown or not variables:
        raise InputError(
            f"{path}: variables {unknown or '(none)'} not in the cube; it holds {list(ds.data_vars)}; "
            "set inputs.cube.variables"
        )
    bad = [v for v in variables if set(ds[v].dims) != spatial]
    if bad:
        raise DataError(f"{path}: variables {bad} do not have the dimensions ({time}, {yname}, {xname})")
    transform, crs = _grid(ds, xname, yname, path)
    arrays = []
    for v in variables:
        a = ds[v].transpose(time, yname, xname).astype("float32")
        fill = ds[v].encoding.get("_FillValue", ds[v].attrs.get("nodata"))
        if fill is not None and not np.isnan(fill):
            a = a.where(a != fill)
        arrays.append(a)
    data = xr.concat(arrays, dim=xr.Variable("band", variables)).transpose(time, "band", yname, xname)
    data = data.rename({time: "time", yname: "y", xname: "x"})
    log.info(
        "%s: cube %s, %d dates, bands %s (lazy)", path.name, dict(data.sizes), data.sizes["time"], variables
    )
    return Cube(data, path, transform, crs)
