"""Point labels (sparse targets): a vector of points with a class column, or a CSV of x, y, class and a CRS,
burnt onto a raster grid as class indices with ``IGNORE_INDEX`` (255) everywhere else.

Each point labels the pixel it falls in. Points outside the grid are counted and logged; two points of different
classes in one pixel make that pixel unlabelled (logged), rather than letting the last one win silently.
"""

from __future__ import annotations

import logging
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from affine import Affine

from eoforge.config import IGNORE_INDEX, class_index
from eoforge.errors import DataError, InputError

log = logging.getLogger(__name__)


WKT_COLUMNS = ("wkt", "geometry", "geom", "the_geom")
"""Names (any case) of a CSV column read as WKT geometry when there are no x/y columns (OGR's usual ones)."""


def read_csv_geometries(
    path: str | Path, crs: str | None, crs_fix: str, x: str = "x", y: str = "y"
) -> gpd.GeoDataFrame:
    """A CSV as vector features: points from ``x``/``y`` columns, else geometries from a WKT column, in ``crs``.

    The one CSV reader of labels (point labels here, ``inputs.labels`` in prepare). A CSV carries no CRS, so
    ``crs`` is required; ``crs_fix`` says where the user gives it. No geometry at all is a one-line error.
    """
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: not a readable CSV ({str(exc).splitlines()[0]}); save it as comma-separated UTF-8 text"
        ) from None
    lower = {str(c).lower(): c for c in df.columns}
    wkt = next((lower[n] for n in WKT_COLUMNS if n in lower), None)
    if x in df.columns and y in df.columns:
        geometry = gpd.points_from_xy(df[x], df[y])
    elif wkt is not None:
        try:
            geometry = gpd.GeoSeries.from_wkt(df[wkt].where(df[wkt].notna(), None)).values
        except Exception as exc:  # shapely raises GEOSException (and others) on malformed WKT
            raise InputError(
                f"{path}: column '{wkt}' is not WKT geometry ({str(exc).splitlines()[0]}); "
                "write geometries as WKT (e.g. POINT (x y))"
            ) from None
        df = df.drop(columns=[wkt])
    else:
        raise InputError(
            f"{path}: a CSV without geometry (no '{x}'/'{y}' columns and no WKT column; columns: "
            f"{', '.join(map(str, df.columns))}); add x and y columns (or a WKT column), or give a vector "
            "file (e.g. GeoPackage)"
        )
    if crs is None:
        raise InputError(f"{path}: a CSV needs its CRS (CSV files carry none); {crs_fix} (e.g. EPSG:4326)")
    return gpd.GeoDataFrame(df, geometry=geometry, crs=crs)


def read_points(
    path: str | Path, column: str, crs: str | None = None, x: str = "x", y: str = "y"
) -> gpd.GeoDataFrame:
    """Points from any OGR vector, or a CSV with ``x`` / ``y`` columns in ``crs`` (required for a CSV)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: point labels not found; check the path")
    if path.suffix.lower() == ".csv":
        gdf = read_csv_geometries(path, crs, "give crs", x, y)
        if column not in gdf.columns:
            raise InputError(f"{path}: columns {[column]} missing; columns are {list(gdf.columns)}")
    else:
        try:
            gdf = gpd.read_file(path)
        except Exception as exc:  # pyogrio raises several types for unreadable files
            raise DataError(f"{path}: unreadable vector ({str(exc).splitlines()[0]})") from None
        if column not in gdf.columns:
            raise InputError(f"{path}: no column '{column}'; columns are {list(gdf.columns)}")
        if gdf.crs is None:
            raise DataError(f"{path}: the vector has no CRS; set one (e.g. ogr2ogr -a_srs EPSG:4326)")
    kinds = set(gdf.geom_type.dropna())
    if kinds - {"Point"}:
        raise InputError(
            f"{path}: point labels must be points, found {sorted(kinds)}; use polygon labels instead"
        )
    nulls = int(gdf[column].isna().sum())
    if nulls:
        log.warning("%s: %d points without a class are ignored", path.name, nulls)
        gdf = gdf[gdf[column].notna()]
    return gdf


def burn_points(
    points: gpd.GeoDataFrame,
    column: str,
    classes: dict[int, str],
    transform: Affine,
    shape: tuple[int, int],
    crs: str,
) -> np.ndarray:
    """``(H, W)`` uint8 class indices at the points' pixels, ``IGNORE_INDEX`` elsewhere."""
    pts = points.to_crs(crs)
    idx = []
    for v in pts[column]:
        key = (
            int(v)
            if isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer())
            else str(v)
        )
        k = class_index(classes, key)
        if k is None:
            raise InputError(
                f"point class '{v}' is not in inputs.classes {classes}; add it or drop those points"
            )
        idx.append(k)
    cols, rows = ~transform * (pts.geometry.x.to_numpy(), pts.geometry.y.to_numpy())
    rows, cols = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    inside = (rows >= 0) & (rows < shape[0]) & (cols >= 0) & (cols < shape[1])
    if (~inside).any():
        log.warning("%d of %d points fall outside the grid and are ignored", int((~inside).sum()), len(pts))
    rows, cols, k = rows[inside], cols[inside], np.asarray(idx, dtype=np.int64)[inside]
    out = np.full(shape, IGNORE_INDEX, dtype=np.uint8)
    out[rows, cols] = k
    # pixels hit by points of different classes: unlabelled, never "last one wins"
    first = np.full(shape, -1, dtype=np.int64)
    first[rows, cols] = k
    conflict = first[rows, cols] != k
    if conflict.any():
        out[rows[conflict], cols[conflict]] = IGNORE_INDEX
        log.warning("%d pixels hold points of different classes and are left unlabelled", int(conflict.sum()))
    log.info("%d labelled pixels from %d points", int((out != IGNORE_INDEX).sum()), len(pts))
    return out
