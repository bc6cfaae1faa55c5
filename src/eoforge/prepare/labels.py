"""Labels onto the image grid: class mapping, vector loading and burning per block, raster labels warped with
nearest neighbour."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
from rasterio import features
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

from eoforge.config import IGNORE_INDEX, InputsConfig
from eoforge.errors import DataError, InputError
from eoforge.geo import Grid
from eoforge.io.rasters import open_raster

log = logging.getLogger(__name__)

VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".kml", ".gml", ".parquet", ".zip"}
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc", ".hdf", ".h5", ".png", ".asc"}


class ClassMapper:
    """Maps raw label values (ids or names) to class indices, collecting values that are not classes."""

    def __init__(self, classes: dict[int, str], ignore_unknown: bool) -> None:
        self.ids = list(classes)
        self.index = {cid: i for i, cid in enumerate(self.ids)}
        self.by_name = {name.strip().lower(): i for i, name in enumerate(classes.values())}
        self.ignore_unknown = ignore_unknown
        self.unknown: set[str] = set()

    def value(self, v: Any) -> int:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return IGNORE_INDEX
        if isinstance(v, str):
            key = v.strip().lower()
            if key in self.by_name:
                return self.by_name[key]
            try:
                v = float(key)
            except ValueError:
                self.unknown.add(repr(v))
                return IGNORE_INDEX
        fv = float(v)
        if fv.is_integer() and int(fv) in self.index:
            return self.index[int(fv)]
        self.unknown.add(str(int(fv)) if fv.is_integer() else str(fv))
        return IGNORE_INDEX

    def array(self, a: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = np.full(a.shape, IGNORE_INDEX, dtype=np.uint8)
        if valid.any():
            uniq, inv = np.unique(a[valid], return_inverse=True)
            lut = np.array([self.value(u.item()) for u in uniq], dtype=np.uint8)
            out[valid] = lut[inv]
        return out

    def check(self, path: Path) -> None:
        if self.unknown and not self.ignore_unknown:
            vals = ", ".join(sorted(self.unknown)[:20])
            # only suggest adding values that can be class ids (integers 0..65534)
            addable = all(_can_be_class_id(v) for v in self.unknown)
            one = sorted(self.unknown)[0]
            fix = (
                "add them to inputs.classes or set inputs.labels.ignore_unknown: true"
                if addable
                else f"set inputs.labels.nodata: {one} (if it marks unlabelled pixels) "
                "or inputs.labels.ignore_unknown: true"
            )
            raise InputError(f"{path}: label values not listed in classes: {vals}; {fix}")


def _can_be_class_id(v: str) -> bool:
    try:
        f = float(v)
    except ValueError:
        return False
    return f.is_integer() and 0 <= f <= 65534


def is_vector(path: Path) -> bool:
    """Known vector suffixes are vectors; for others, whatever OGR can open (e.g. a .csv with WKT) is one."""
    if path.suffix.lower() in VECTOR_SUFFIXES:
        return True
    if path.suffix.lower() in RASTER_SUFFIXES or not path.exists():
        return False
    try:
        pyogrio.read_info(path)
    except Exception:
        return False
    return True


def load_vector(cfg: InputsConfig, grid: Grid, mapper: ClassMapper) -> gpd.GeoDataFrame:
    lab = cfg.label_source()
    path = lab.path
    if not path.exists():
        raise InputError(f"{path}: label file not found; check inputs.labels.path")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    if lab.column is None and lab.value is None:
        cols = ", ".join(c for c in gdf.columns if c != "geometry")
        raise InputError(
            f"{path}: vector labels need inputs.labels.column (columns: {cols}) or inputs.labels.value (one class)"
        )
    if lab.column is not None and lab.column not in gdf.columns:
        cols = ", ".join(c for c in gdf.columns if c != "geometry")
        raise InputError(
            f"{path}: no column '{lab.column}' (columns: {cols}); set inputs.labels.column to one of them"
        )
    if gdf.crs is None:
        raise DataError(f"{path}: the vector file has no CRS; assign one (e.g. ogr2ogr -a_srs)")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty].to_crs(grid.crs)
    gdf = gdf[gdf.geometry.intersects(box(*grid.bounds))]
    if gdf.empty:
        raise InputError(
            f"{path}: no label geometry overlaps the image bounds {tuple(round(b, 2) for b in grid.bounds)} "
            f"({grid.crs}); check that labels and image cover the same area"
        )
    values = gdf[lab.column] if lab.column is not None else [lab.value] * len(gdf)
    gdf = gdf.assign(_cls=[mapper.value(v) for v in values])
    mapper.check(path)
    return gdf[gdf["_cls"] != IGNORE_INDEX]


def label_reader(cfg: InputsConfig, grid: Grid) -> tuple[Any, Any]:
    """Open a raster label file on the image grid (reprojected with nearest neighbour when needed)."""
    path = cfg.label_source().path
    src = open_raster(path)
    if src.crs is None:
        src.close()
        raise DataError(f"{path}: label raster has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
    lb = transform_bounds(src.crs, grid.crs, *src.bounds)
    ib = grid.bounds
    if lb[0] >= ib[2] or lb[2] <= ib[0] or lb[1] >= ib[3] or lb[3] <= ib[1]:
        src.close()
        raise InputError(
            f"{path}: the label raster does not overlap the image; check that labels and image cover the same area"
        )
    same = src.crs.to_string() == grid.crs and Grid(grid.crs, src.transform, src.height, src.width).same_as(
        grid
    )
    if same:
        return src, src
    log.info("%s: reprojecting labels onto the image grid (nearest neighbour)", path)
    vrt = WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=Resampling.nearest,
        nodata=src.nodata if src.nodata is not None else -1,
    )
    return src, vrt


def burn(gdf: gpd.GeoDataFrame, grid: Grid, win: Window, fill: int, all_touched: bool) -> np.ndarray:
    shape = (int(win.height), int(win.width))
    hits = gdf.sindex.query(box(*grid.window_bounds(win)), predicate="intersects")
    if len(hits) == 0:
        return np.full(shape, fill, dtype=np.uint8)
    sub = gdf.iloc[np.sort(hits)]
    return features.rasterize(
        zip(sub.geometry, sub["_cls"], strict=True),
        out_shape=shape,
        transform=grid.window_transform(win),
        fill=fill,
        dtype="uint8",
        all_touched=all_touched,
    )
