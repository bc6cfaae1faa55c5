"""Any reference on a map's grid: rasters (any CRS/grid, nearest warp), polygons (rasterized) or points.

A :class:`Reference` answers, block by block, which reference class (by id) lies under which map pixel:
``pairs(window, map_values, map_valid)`` returns the map's class ids and the reference's class ids of the
pixels (or points) that both cover. Reference values are matched to classes by id or by name through a
:class:`ClassTable`; pixels outside the reference, on its nodata or with a null class are ignored.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from rasterio import features
from rasterio.windows import Window
from shapely.geometry import box

from eoforge.errors import DataError, InputError
from eoforge.geo import Grid
from eoforge.io.rasters import nearest_on_grid, open_raster

log = logging.getLogger(__name__)

VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".kml", ".gml", ".parquet", ".zip", ".csv"}
NO_CLASS = -1


@dataclass
class ClassTable:
    """Class ids and names. Empty means "ids as they are" (names cannot be matched then)."""

    ids: list[int] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, spec: Sequence[str] | str | None) -> ClassTable:
        """From ``["10=water", "20=forest"]`` or ``"10=water,20=forest"`` (``ID`` alone names it by its id)."""
        if not spec:
            return cls()
        items = [
            s for part in ([spec] if isinstance(spec, str) else spec) for s in part.split(",") if s.strip()
        ]
        ids, names = [], []
        for item in items:
            key, _, name = item.partition("=")
            try:
                cid = int(key.strip())
            except ValueError:
                raise InputError(
                    f"--classes '{item}': expected ID=NAME with an integer ID, e.g. --classes 1=water,2=forest"
                ) from None
            if cid in ids:
                raise InputError(f"--classes: class id {cid} is listed twice; list each id once")
            ids.append(cid)
            names.append(name.strip() or str(cid))
        return cls(ids, names)

    @classmethod
    def from_mapping(cls, classes: dict[int, str]) -> ClassTable:
        return cls(list(classes), list(classes.values()))

    def name(self, cid: int) -> str:
        return self.names[self.ids.index(cid)] if cid in self.ids else str(cid)

    def match(self, values: Any, source: Path | str) -> np.ndarray:
        """Class ids of reference ``values`` (ids or names; null → ``NO_CLASS``); unknown values raise."""
        by_name = {n.strip().lower(): i for i, n in zip(self.ids, self.names, strict=True)}
        known = set(self.ids)
        s = pd.Series(values, dtype=object)
        out = np.full(len(s), NO_CLASS, dtype=np.int64)
        unknown: set[str] = set()
        for k, v in enumerate(s.tolist()):
            if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
                continue
            if isinstance(v, str):
                key = v.strip().lower()
                if key in by_name:
                    out[k] = by_name[key]
                    continue
                try:
                    v = float(key)
                except ValueError:
                    unknown.add(repr(v))
                    continue
            fv = float(v)
            if fv.is_integer() and fv >= 0 and (not known or int(fv) in known):
                out[k] = int(fv)
            else:
                unknown.add(str(v))
        if unknown:
            vals = ", ".join(sorted(unknown)[:20])
            hint = "list them in --classes ID=NAME" if self.ids else "give --classes ID=NAME to match names"
            hint += (
                " (values meaning 'no reference' belong in the file's nodata, e.g. gdal_edit.py -a_nodata 0)"
            )
            raise InputError(f"{source}: reference values that are not classes: {vals}; {hint}")
        return out


class Reference(ABC):
    """A reference read onto a map grid. Use as a context manager."""

    kind = "reference"

    def __init__(self, path: Path) -> None:
        self.path = path

    @abstractmethod
    def pairs(
        self, window: Window, map_values: np.ndarray, map_valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Map class ids and reference class ids of every compared unit inside ``window``."""

    def close(self) -> None:
        return None

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RasterReference(Reference):
    """A raster of class ids, warped onto the map grid with nearest neighbour when its grid differs."""

    kind = "raster"

    def __init__(self, path: Path, grid: Grid, classes: ClassTable) -> None:
        super().__init__(path)
        self.classes = classes
        self.src = open_raster(path)
        if self.src.crs is None:
            self.src.close()
            raise DataError(f"{path}: the reference raster has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
        # with a nodata value, GDAL's alpha band misses source nodata pixels: keep the value instead
        self.reader: Any = nearest_on_grid(
            self.src, grid, "reference", nodata=self.src.nodata, add_alpha=self.src.nodata is None
        )
        self._lut: dict[float, int] = {}

    def read(self, window: Window) -> np.ndarray:
        a = self.reader.read(1, window=window)
        nd = self.src.nodata
        if nd is None:
            ok = self.reader.read_masks(1, window=window) > 0
        else:
            ok = ~np.isnan(a) if np.isnan(nd) else a != np.array(nd).astype(a.dtype)
        if a.dtype.kind == "f":
            ok &= ~np.isnan(a)
        out = np.full(a.shape, NO_CLASS, dtype=np.int64)
        if ok.any() and a.dtype.kind in "ui" and a.dtype.itemsize <= 2 and a.min() >= 0:
            # small integer ids: a lookup table indexed by value (a bincount finds the values present)
            present = np.flatnonzero(np.bincount(a[ok].ravel()))
            new_vals = [int(v) for v in present if float(v) not in self._lut]
            if new_vals:
                self._lut.update(
                    zip(map(float, new_vals), self.classes.match(new_vals, self.path).tolist(), strict=True)
                )
            lut = np.full(max(int(a.max()), int(present[-1])) + 1, NO_CLASS, dtype=np.int64)
            lut[present] = [self._lut[float(v)] for v in present]
            out = lut[a]
            out[~ok] = NO_CLASS
        elif ok.any():
            u, inv = np.unique(a[ok], return_inverse=True)
            new = [v for v in u.tolist() if v not in self._lut]
            if new:
                self._lut.update(zip(new, self.classes.match(new, self.path).tolist(), strict=True))
            out[ok] = np.array([self._lut[v] for v in u.tolist()], dtype=np.int64)[inv]
        return out

    def pairs(
        self, window: Window, map_values: np.ndarray, map_valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        ref = self.read(window)
        ok = map_valid & (ref != NO_CLASS)
        if ok.all():
            return map_values.ravel().astype(np.int64), ref.ravel()
        return map_values[ok].astype(np.int64), ref[ok]

    def close(self) -> None:
        if self.reader is not self.src:
            self.reader.close()
        self.src.close()


def _read_vector(path: Path, column: str | None, grid: Grid) -> gpd.GeoDataFrame:
    if not path.exists():
        raise InputError(f"{path}: reference file not found; check the path")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    cols = [c for c in gdf.columns if c != "geometry"]
    if column is None:
        raise InputError(f"{path}: vector references need --column (columns: {', '.join(cols)})")
    if column not in gdf.columns:
        raise InputError(
            f"{path}: no column '{column}' (columns: {', '.join(cols)}); set --column to one of them"
        )
    if gdf.crs is None:
        raise DataError(f"{path}: the vector file has no CRS; assign one (e.g. ogr2ogr -a_srs)")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty].to_crs(grid.crs)
    return gdf


class PolygonReference(Reference):
    """Polygons with a class column, rasterized onto the map grid block by block (pixel centres inside)."""

    kind = "polygons"

    def __init__(
        self, gdf: gpd.GeoDataFrame, path: Path, grid: Grid, column: str, classes: ClassTable
    ) -> None:
        super().__init__(path)
        self.grid = grid
        gdf = gdf.assign(_cls=classes.match(gdf[column], path))
        self.gdf = gdf[gdf["_cls"] != NO_CLASS]

    def pairs(
        self, window: Window, map_values: np.ndarray, map_valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        shape = (int(window.height), int(window.width))
        hits = self.gdf.sindex.query(box(*self.grid.window_bounds(window)), predicate="intersects")
        if len(hits) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        sub = self.gdf.iloc[np.sort(hits)]
        ref = features.rasterize(
            zip(sub.geometry, sub["_cls"].astype("int32"), strict=True),
            out_shape=shape,
            transform=self.grid.window_transform(window),
            fill=NO_CLASS,
            dtype="int32",
        )
        ok = map_valid & (ref != NO_CLASS)
        return map_values[ok].astype(np.int64), ref[ok].astype(np.int64)


class PointReference(Reference):
    """Points with a class column; each point counts once, on the map pixel it falls in."""

    kind = "points"

    def __init__(
        self, gdf: gpd.GeoDataFrame, path: Path, grid: Grid, column: str, classes: ClassTable
    ) -> None:
        super().__init__(path)
        ids = classes.match(gdf[column], path)
        unlabelled = int((ids == NO_CLASS).sum())
        xs, ys = gdf.geometry.x.to_numpy(), gdf.geometry.y.to_numpy()
        cols, rows = ~grid.transform * (xs, ys)
        rows, cols = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
        inside = (rows >= 0) & (rows < grid.height) & (cols >= 0) & (cols < grid.width)
        keep = inside & (ids != NO_CLASS)
        if unlabelled:
            log.info("%s: %d points have no reference class and are skipped", path, unlabelled)
        if (~inside).any():
            log.warning("%s: %d points fall outside the map and are skipped", path, int((~inside).sum()))
        order = np.argsort(rows[keep], kind="stable")  # sorted by row: a window finds its band by bisection
        self.rows, self.cols, self.ids = rows[keep][order], cols[keep][order], ids[keep][order]
        self.total = len(gdf)
        self.used = 0

    def pairs(
        self, window: Window, map_values: np.ndarray, map_valid: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        r0, c0 = int(window.row_off), int(window.col_off)
        lo, hi = np.searchsorted(self.rows, [r0, r0 + int(window.height)])
        rows, cols, ids = self.rows[lo:hi], self.cols[lo:hi], self.ids[lo:hi]
        sel = (cols >= c0) & (cols < c0 + int(window.width))
        r, c, ids = rows[sel] - r0, cols[sel] - c0, ids[sel]
        ok = map_valid[r, c]
        self.used += int(ok.sum())
        return map_values[r, c][ok].astype(np.int64), ids[ok]


def _is_vector(path: Path) -> bool:
    if path.suffix.lower() in VECTOR_SUFFIXES:
        return True
    if path.is_dir():
        return False
    try:
        import pyogrio

        pyogrio.read_info(path)
    except Exception:
        return False
    return True


def open_reference(
    path: str | Path, grid: Grid, column: str | None = None, classes: ClassTable | None = None
) -> Reference:
    """Open ``path`` as a reference on ``grid``: a raster, polygons or points (chosen from the file)."""
    path = Path(path)
    classes = classes or ClassTable()
    if not path.exists():
        raise InputError(f"{path}: reference file not found; check the path")
    if not _is_vector(path):
        return RasterReference(path, grid, classes)
    gdf = _read_vector(path, column, grid)
    if gdf.empty:
        raise InputError(f"{path}: the reference has no geometry; give a file with features")
    gdf = gdf[gdf.geometry.intersects(box(*grid.bounds))]
    if gdf.empty:
        raise InputError(
            f"{path}: no reference feature overlaps the map bounds {tuple(round(b, 2) for b in grid.bounds)} "
            f"({grid.crs}); check that reference and map cover the same area"
        )
    types = set(gdf.geometry.geom_type)
    col = str(column)  # _read_vector refused a missing column
    if types <= {"Point"}:
        return PointReference(gdf, path, grid, col, classes)
    if types <= {"Polygon", "MultiPolygon"}:
        return PolygonReference(gdf, path, grid, col, classes)
    raise InputError(
        f"{path}: reference geometries are {', '.join(sorted(types))}; give polygons or points (not mixed, no lines)"
    )
