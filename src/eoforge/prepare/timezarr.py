"""The prepared time stack as a CF-style Zarr store, ``(time, band, y, x)`` with its dates, for ``xarray.open_zarr``.

Written block by block next to ``image.tif`` (the date-major GeoTIFF the later stages stream from), so any
xarray user sees the prepared stack with named dimensions, a decoded ``time`` coordinate, band names, pixel
centre ``x`` / ``y`` and a ``spatial_ref`` grid mapping.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import zarr
from rasterio.windows import Window

from eoforge.geo import Grid

EPOCH = date(1970, 1, 1).toordinal()


class TimeZarr:
    """A ``(time, band, y, x)`` float32 Zarr store filled window by window (``write``), then ``close``d."""

    def __init__(
        self, path: Path, grid: Grid, dates: Sequence[str], bands: Sequence[str], block: int
    ) -> None:
        self.path = path
        self.n_bands = len(bands)
        g = zarr.open_group(str(path), mode="w", attributes={"dates": list(dates), "bands": list(bands)})
        g.create_array(
            "spatial_ref",
            shape=(),
            dtype="int32",
            fill_value=0,
            attributes={
                "crs_wkt": rasterio.crs.CRS.from_user_input(grid.crs).to_wkt(),
                "spatial_ref": grid.crs,
            },
        )
        self.image = g.create_array(
            "image",
            shape=(len(dates), len(bands), grid.height, grid.width),
            chunks=(1, len(bands), min(block, grid.height), min(block, grid.width)),
            dtype="float32",
            fill_value=np.nan,
            dimension_names=["time", "band", "y", "x"],
            attributes={"grid_mapping": "spatial_ref", "long_name": "prepared image"},
        )
        days = np.asarray([date.fromisoformat(d).toordinal() - EPOCH for d in dates], dtype=np.int64)
        t = grid.transform
        coords: dict[str, tuple[np.ndarray, str, dict[str, Any]]] = {
            "time": (
                days,
                "time",
                {
                    "units": "days since 1970-01-01",
                    "calendar": "proleptic_gregorian",
                    "standard_name": "time",
                },
            ),
            "band": (np.asarray(list(bands), dtype=str), "band", {"long_name": "band name"}),
            "x": (
                t.c + (np.arange(grid.width) + 0.5) * t.a,
                "x",
                {"standard_name": "projection_x_coordinate"},
            ),
            "y": (
                t.f + (np.arange(grid.height) + 0.5) * t.e,
                "y",
                {"standard_name": "projection_y_coordinate"},
            ),
        }
        for name, (data, dim, attrs) in coords.items():
            arr = g.create_array(
                name,
                shape=data.shape,
                dtype=data.dtype if data.dtype.kind != "U" else str,
                dimension_names=[dim],
                attributes=attrs,
            )
            arr[...] = data

    def write(self, channels: np.ndarray, window: Window) -> None:
        """Write date-major channels ``(time * band, h, w)`` of one window."""
        r, c = int(window.row_off), int(window.col_off)
        h, w = channels.shape[1:]
        self.image[:, :, r : r + h, c : c + w] = channels.reshape(-1, self.n_bands, h, w)

    def close(self) -> None:
        with warnings.catch_warnings():  # consolidated metadata is a zarr-python extension of the v3 spec
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.path))
