"""Fixtures writing tiny georeferenced rasters and vectors (64 px, UTM 33N, 10 m pixels)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import box

CRS = "EPSG:32633"
ORIGIN = (500000.0, 5000000.0)
RES = 10.0
TRANSFORM = Affine(RES, 0, ORIGIN[0], 0, -RES, ORIGIN[1])


def write_tif(
    path: Path, data: np.ndarray, nodata: float | None = None, transform: Affine = TRANSFORM, crs: str = CRS
) -> Path:
    data = data if data.ndim == 3 else data[None]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as dst:
        dst.write(data)
    return path


def pixel_box(row0: int, col0: int, row1: int, col1: int) -> object:
    """Polygon covering pixel rows row0..row1-1 and cols col0..col1-1 of the test grid."""
    x0, y0 = TRANSFORM @ (col0, row0)
    x1, y1 = TRANSFORM @ (col1, row1)
    return box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


@pytest.fixture
def scene(tmp_path: Path) -> dict[str, object]:
    """Three single-band uint16 files (64x64) with a nodata corner, and polygon labels with class names.

    Left half of the scene (cols < 32) is class 'water' (band values low), right half 'forest' (high);
    a 'field' square sits at rows 8..23, cols 40..55.
    """
    rng = np.random.default_rng(0)
    h = w = 64
    base = np.where(np.arange(w)[None, :] < 32, 100, 1000).astype(np.uint16).repeat(h, 0)
    paths = []
    for b in range(3):
        a = (base + rng.integers(0, 50, (h, w)) + 10 * b).astype(np.uint16)
        a[rows_cols_nodata()] = 0
        paths.append(write_tif(tmp_path / f"band{b + 1}.tif", a, nodata=0))
    gdf = gpd.GeoDataFrame(
        {"cover": ["water", "forest", "field"]},
        geometry=[pixel_box(0, 0, 64, 32), pixel_box(0, 32, 64, 64), pixel_box(8, 40, 24, 56)],
        crs=CRS,
    )
    labels = tmp_path / "labels.gpkg"
    gdf.to_file(labels)
    return {
        "images": paths,
        "labels": labels,
        "classes": {1: "water", 2: "forest", 3: "field"},
        "dir": tmp_path,
    }


def rows_cols_nodata() -> tuple[slice, slice]:
    """The nodata corner of the `scene` fixture: rows 0..3, cols 0..3."""
    return slice(0, 4), slice(0, 4)
