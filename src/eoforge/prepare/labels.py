"""Labels onto the image grid: class mapping, vector loading and burning per block, raster labels warped with
nearest neighbour."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import shapely
from rasterio import features
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

from eoforge.config import IGNORE_INDEX, InputsConfig
from eoforge.errors import DataError, EoforgeError, InputError
from eoforge.geo import Grid
from eoforge.io.rasters import nearest_on_grid, open_raster
from eoforge.points import read_csv_geometries

log = logging.getLogger(__name__)

VECTOR_SUFFIXES = {".csv", ".gpkg", ".shp", ".geojson", ".json", ".fgb", ".kml", ".gml", ".parquet", ".zip"}
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


SPARSE_TYPES = {"Point", "MultiPoint", "LineString", "MultiLineString", "LinearRing"}
"""Geometry types that label pixels, not areas (burnt as the pixels they touch: sparse labels)."""


def _layer(path: Path, layer: str | None) -> str | None:
    """The layer to read: ``inputs.labels.layer``, else the only layer with geometry (several: an error)."""
    try:
        layers = pyogrio.list_layers(path)
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise DataError(f"{path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    names = [str(n) for n, _ in layers]
    spatial = [str(n) for n, g in layers if g is not None] or names
    if layer is not None:
        if layer not in names:
            raise InputError(
                f"{path}: no layer '{layer}' (layers: {', '.join(spatial)}); set inputs.labels.layer to one of them"
            )
        return layer
    if len(spatial) > 1:
        raise InputError(
            f"{path}: holds {len(spatial)} layers ({', '.join(spatial)}); set inputs.labels.layer to the one "
            "with the labels"
        )
    return spatial[0] if spatial else None


def _read(cfg: InputsConfig) -> gpd.GeoDataFrame:
    """The label features of a CSV (x/y or WKT columns, ``inputs.labels.crs``) or of one layer of an OGR file."""
    lab = cfg.label_source()
    path = lab.path
    if path.suffix.lower() == ".csv":
        return read_csv_geometries(path, lab.crs, "set inputs.labels.crs")
    layer = None
    try:
        if path.suffix.lower() == ".parquet":  # GeoParquet through pyarrow: GDAL's driver is often missing
            gdf = gpd.read_parquet(path)
        else:
            layer = _layer(path, lab.layer)
            gdf = gpd.read_file(path, layer=layer)
    except EoforgeError:
        raise
    except Exception as exc:  # pyogrio / pyarrow raise several types for unreadable files
        raise DataError(f"{path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    if not isinstance(gdf, gpd.GeoDataFrame):
        raise InputError(
            f"{path}: layer '{layer}' has no geometry; choose a layer with geometry in inputs.labels.layer"
        )
    if gdf.crs is None and lab.crs is not None:
        gdf = gdf.set_crs(lab.crs)
    elif gdf.crs is not None and lab.crs is not None and not gdf.crs.equals(lab.crs):
        raise InputError(
            f"{path}: the file's CRS ({gdf.crs.to_string()}) differs from inputs.labels.crs ({lab.crs}); "
            "drop inputs.labels.crs (it is for CSV files and files without a CRS)"
        )
    return gdf


def _polygonal(geom: Any) -> Any:
    """The polygon parts of a repaired geometry (make_valid may add lines or points where an outline folds)."""
    if geom is None or geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    polys = [g for g in shapely.get_parts(geom) if g.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(polys) if polys else shapely.Polygon()


def load_vector(
    cfg: InputsConfig, grid: Grid, mapper: ClassMapper, sparse: bool = False
) -> tuple[gpd.GeoDataFrame, dict[str, Any]]:
    """Label features on ``grid`` with a ``_cls`` column of class indices, and facts for ``scene.json``.

    Rows without a class are dropped and counted (all of them: an error); rows without geometry too. Points
    and lines label the pixels they touch (sparse labels): refused unless ``sparse`` (``chips.min_labelled:
    0``), since dense segmentation needs areas. Invalid polygons (self-intersecting outlines) are repaired with
    ``make_valid`` and counted: the outline still says which area was meant, and a routine digitising slip
    should not stop a run (QGIS "Fix geometries" does the same GEOS repair).
    """
    lab = cfg.label_source()
    path = lab.path
    if not path.exists():
        raise InputError(f"{path}: label file not found; check inputs.labels.path")
    gdf = _read(cfg)
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
        raise DataError(
            f"{path}: the vector file has no CRS; assign one (e.g. ogr2ogr -a_srs) or set inputs.labels.crs"
        )
    facts: dict[str, Any] = {"kind": "vector", "layer": lab.layer, "rows": len(gdf)}
    if lab.column is not None:
        col = gdf[lab.column]
        null = col.isna().to_numpy()  # an empty string is a value: unknown unless listed (ignore_unknown)
        facts["null_class"] = int(null.sum())
        if null.all():
            raise InputError(
                f"{path}: every row has an empty class in column '{lab.column}'; fill the column or choose "
                "another with inputs.labels.column"
            )
        if null.any():
            log.warning(
                "%s: %d of %d rows have no class in column '%s' and are dropped",
                path,
                int(null.sum()),
                len(gdf),
                lab.column,
            )
            gdf = gdf[~null]
    no_geom = (gdf.geometry.isna() | gdf.geometry.is_empty).to_numpy()
    facts["no_geometry"] = int(no_geom.sum())
    if no_geom.any():
        log.warning("%s: %d rows without geometry are dropped", path, int(no_geom.sum()))
        gdf = gdf[~no_geom]
    types = gdf.geom_type
    facts["geometries"] = {str(k): int(v) for k, v in types.value_counts().sort_index().items()}
    n_sparse = int(types.isin(SPARSE_TYPES).sum())
    if n_sparse and not sparse:
        kinds = ", ".join(f"{k}: {v}" for k, v in facts["geometries"].items() if k in SPARSE_TYPES)
        raise InputError(
            f"{path}: {n_sparse} of {len(gdf)} label geometries are points or lines ({kinds}), which label "
            "pixels, not areas; buffer them into polygons for dense segmentation, or set chips.min_labelled: 0 "
            "to train on them as sparse labels"
        )
    if n_sparse:
        log.info("%s: %d points/lines are sparse labels (the pixels they touch)", path, n_sparse)
    invalid = (~types.isin(SPARSE_TYPES) & ~gdf.geometry.is_valid).to_numpy()
    facts["repaired"] = int(invalid.sum())
    if invalid.any():
        fixed = gdf.geometry[invalid].make_valid().apply(_polygonal)
        gdf = gdf.copy()
        gdf.loc[invalid, gdf.geometry.name] = fixed
        log.warning(
            "%s: %d invalid polygon(s) (e.g. self-intersecting outlines) repaired with shapely.make_valid",
            path,
            int(invalid.sum()),
        )
    gdf = gdf.to_crs(grid.crs)
    gdf = gdf[gdf.geometry.intersects(box(*grid.bounds))]
    if gdf.empty:
        raise InputError(
            f"{path}: no label geometry overlaps the image bounds {tuple(round(b, 2) for b in grid.bounds)} "
            f"({grid.crs}); check that labels and image cover the same area"
        )
    values = gdf[lab.column] if lab.column is not None else [lab.value] * len(gdf)
    gdf = gdf.assign(_cls=[mapper.value(v) for v in values])
    mapper.check(path)
    return gdf[gdf["_cls"] != IGNORE_INDEX], facts


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
    return src, nearest_on_grid(src, grid, "labels", nodata=src.nodata if src.nodata is not None else -1)


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
