"""Polygons of a class map, made block of rows by block of rows and merged across block edges.

``rasterio.features.shapes`` polygonises each block (4-connectivity). A polygon that touches the block's lower
edge may continue in the next block: it is held back and unioned (``shapely``) with the polygons of the same
class touching the next block's upper edge. Every other polygon is final and written at once, so memory holds
one block and the polygons crossing one edge. Polygons smaller than ``min_area`` pixels are dropped after the
merge. Output: GeoPackage (appended block by block through pyogrio) or GeoParquet (one row group per block).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import rasterio
import rasterio.features
import shapely
from rasterio.windows import Window
from shapely.geometry import shape

log = logging.getLogger(__name__)

_Poly = tuple[Any, int]


class _Writer:
    """Appends batches of polygons to a GeoPackage or GeoParquet file."""

    def __init__(self, target: Path, fmt: str, crs: Any, names: dict[int, str]) -> None:
        self.target, self.fmt, self.crs, self.names = target, fmt, crs, names
        self.count = 0
        self._pq: pq.ParquetWriter | None = None
        if target.exists():
            target.unlink()  # the atomic helper creates an empty file; GDAL and Arrow want to create their own

    def _frame(self, polys: list[_Poly], pixel_area: float) -> gpd.GeoDataFrame:
        geoms = [g for g, _ in polys]
        ids = np.array([v for _, v in polys], dtype=np.int64)
        return gpd.GeoDataFrame(
            {
                "class_id": ids,
                "class_name": [self.names.get(int(v), str(v)) for v in ids],
                "pixels": np.rint(shapely.area(np.array(geoms, dtype=object)) / pixel_area).astype(np.int64),
            },
            geometry=geoms,
            crs=self.crs,
        )

    def write(self, polys: list[_Poly], pixel_area: float) -> None:
        if not polys:
            return
        df = self._frame(polys, pixel_area)
        if self.fmt == "gpkg":
            df.to_file(self.target, driver="GPKG", layer="classes", engine="pyogrio", append=self.count > 0)
        else:
            table = pa.table(
                {
                    "class_id": pa.array(df["class_id"].to_numpy()),
                    "class_name": pa.array(df["class_name"].tolist(), pa.string()),
                    "pixels": pa.array(df["pixels"].to_numpy()),
                    "geometry": pa.array(shapely.to_wkb(df.geometry.values), pa.binary()),
                }
            )
            if self._pq is None:
                # GeoParquet 1.0 metadata, written by hand because the file is appended row group by row group
                geo = {
                    "version": "1.0.0",
                    "primary_column": "geometry",
                    "columns": {
                        "geometry": {
                            "encoding": "WKB",
                            "geometry_types": ["Polygon"],
                            "crs": json.loads(df.crs.to_json()) if df.crs is not None else None,
                        }
                    },
                }
                schema = table.schema.with_metadata({b"geo": json.dumps(geo).encode()})
                self._pq = pq.ParquetWriter(self.target, schema)
            self._pq.write_table(table.replace_schema_metadata(self._pq.schema.metadata))
        self.count += len(polys)

    def close(self) -> None:
        if self._pq is not None:
            self._pq.close()
        elif self.count == 0 and self.fmt == "gpkg":
            # an empty but valid file: no class pixels at all
            self._frame([], 1.0).to_file(self.target, driver="GPKG", layer="classes", engine="pyogrio")
        elif self.count == 0:
            self._frame([], 1.0).to_parquet(self.target)


def vectorize_map(
    class_map: Path,
    target: Path,
    fmt: str = "gpkg",
    min_area: int = 0,
    names: dict[int, str] | None = None,
    block: int = 512,
) -> int:
    """Polygonise ``class_map`` (nodata excluded) into ``target``; returns the number of polygons written."""
    names = names or {}
    with rasterio.open(class_map) as src:
        transform, nodata, crs = src.transform, src.nodata, src.crs
        pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
        writer = _Writer(target, fmt, crs, names)
        held: list[_Poly] = []  # polygons touching the lower edge of the previous block
        for r0 in range(0, src.height, block):
            h = min(block, src.height - r0)
            win = Window(0, r0, src.width, h)
            data = src.read(1, window=win)
            valid = data != nodata if nodata is not None else np.ones(data.shape, bool)
            wt = src.window_transform(win)
            top = _edge_line(wt, 0, src.width)
            bottom = _edge_line(wt, h, src.width)
            polys = [
                (shape(g), int(v))
                for g, v in rasterio.features.shapes(data, mask=valid, transform=wt, connectivity=4)
            ]
            final: list[_Poly] = []
            if held:
                at_top = [p for p in polys if _touches(p[0], top)]
                rest = [p for p in polys if not _touches(p[0], top)]
                polys = rest + _merge(held + at_top)
            last = r0 + h >= src.height
            held = []
            for p in polys:
                (held if not last and _touches(p[0], bottom) else final).append(p)
            writer.write([p for p in final if p[0].area / pixel_area >= min_area], pixel_area)
        writer.close()
    log.info("vectorized %s into %d polygons (%s)", class_map.name, writer.count, target.name)
    return writer.count


def _edge_line(transform: Any, row: int, width: int) -> Any:
    x0, y0 = transform * (0, row)
    x1, y1 = transform * (width, row)
    return shapely.LineString([(x0, y0), (x1, y1)])


def _touches(geom: Any, line: Any) -> bool:
    """Whether ``geom`` shares a stretch of boundary with ``line`` (not just a corner)."""
    inter = geom.boundary.intersection(line)
    return bool(inter.length > 0)


def _merge(polys: list[_Poly]) -> list[_Poly]:
    """Union the polygons of each class; pieces that share only corners stay separate (4-connectivity)."""
    out: list[_Poly] = []
    for v in sorted({v for _, v in polys}):
        merged = shapely.unary_union([g for g, c in polys if c == v])
        out.extend((g, v) for g in getattr(merged, "geoms", [merged]))
    return out
