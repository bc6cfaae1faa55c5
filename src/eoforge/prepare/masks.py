"""Masks that turn pixels into nodata, read on the target grid window by window.

``RasterMask``: listed classes of a class raster (Sentinel-2 SCL) or set bits of a QA band (Landsat
QA_PIXEL), warped with nearest neighbour. ``VectorMask``: areas of a vector file to exclude, or (``inside``)
everything outside an area of interest. GDAL masks and alpha bands are handled by the band readers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import geopandas as gpd
import numpy as np
from rasterio import features
from rasterio.windows import Window
from shapely.geometry import box

from eoforge.errors import DataError, InputError
from eoforge.geo import Grid
from eoforge.io.rasters import open_raster
from eoforge.prepare.align import GridReader


class Mask(Protocol):
    def read(self, window: Window) -> np.ndarray:
        """``(h, w)`` bool, True where the pixel becomes nodata."""
        ...

    def close(self) -> None: ...


class RasterMask:
    """Pixels whose mask-raster value is one of ``classes``, or has any of ``bits`` set, become nodata."""

    def __init__(
        self, path: str | Path, grid: Grid, classes: Sequence[int] = (), bits: Sequence[int] = ()
    ) -> None:
        self.path = Path(path)
        with open_raster(self.path) as src:
            dtype = src.dtypes[0]
            count = src.count
        if count != 1 or np.dtype(dtype).kind not in "iu":
            kind = "classes" if classes else "bits"
            raise InputError(
                f"{self.path}: a mask with {kind} needs a single-band integer raster (a class or QA band), "
                f"this one has {count} band(s) of {dtype}; point the mask at the quality band"
            )
        self.classes = np.asarray(list(classes), dtype=np.int64)
        self.bits = int(sum(1 << b for b in bits))
        self._reader = GridReader(self.path, grid, resampling="nearest", dtype=dtype)
        self._fill = np.iinfo(np.dtype(dtype)).max if self._reader.warped else None

    def read(self, window: Window) -> np.ndarray:
        raw = self._reader.read(window)[0]
        if raw.dtype.kind == "f":  # read directly (already on the grid): NaN at the file's nodata
            ok = ~np.isnan(raw)
            vals = np.where(ok, raw, 0).astype(np.int64)
        else:
            ok = raw != self._fill if self._fill is not None else np.ones(raw.shape, bool)
            vals = raw.astype(np.int64)
        hit = np.isin(vals, self.classes) if len(self.classes) else (vals & self.bits) != 0
        out: np.ndarray = hit & ok
        return out

    def close(self) -> None:
        self._reader.close()


def load_geometries(path: str | Path, crs: str, what: str) -> gpd.GeoDataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {what} file not found; check the path")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    if gdf.crs is None:
        raise DataError(f"{path}: the vector file has no CRS; assign one (e.g. ogr2ogr -a_srs)")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    if gdf.empty:
        raise InputError(f"{path}: the {what} holds no geometry; give a file with polygons")
    return gdf.to_crs(crs)


class VectorMask:
    """Pixels inside the geometries become nodata, or, with ``inside=True`` (an AOI), pixels outside them."""

    def __init__(self, gdf: gpd.GeoDataFrame, grid: Grid, inside: bool = False) -> None:
        self.gdf = gdf.reset_index(drop=True)
        self.grid = grid
        self.inside = inside

    def read(self, window: Window) -> np.ndarray:
        shape = (int(window.height), int(window.width))
        hits = self.gdf.sindex.query(box(*self.grid.window_bounds(window)), predicate="intersects")
        burnt = np.zeros(shape, dtype=bool)
        if len(hits):
            burnt = features.geometry_mask(
                self.gdf.geometry.iloc[np.sort(hits)],
                out_shape=shape,
                transform=self.grid.window_transform(window),
                invert=True,
            )
        out: np.ndarray = ~burnt if self.inside else burnt
        return out

    def close(self) -> None:
        return None
