"""What the service sends back besides the GeoTIFF: class pixel counts and areas, and map-page previews.

Counts are accumulated block by block (memory bounded by a block). Previews are decimated reads (at most
``MAX_SIDE`` pixels a side) warped to Web Mercator, so a Leaflet image overlay sits exactly on its bounds.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import calculate_default_transform, reproject, transform_bounds

from eoforge.package import PackageMeta

MAX_SIDE = 1024
WEB_MERCATOR = "EPSG:3857"


def class_counts(map_path: Path, meta: PackageMeta) -> dict[str, Any]:
    """Pixels and hectares per class of a class-map GeoTIFF (areas only for a projected CRS in metres)."""
    with rasterio.open(map_path) as src:
        counts = np.zeros(65536, dtype=np.int64)
        for _, window in src.block_windows(1):
            counts += np.bincount(src.read(1, window=window).ravel(), minlength=65536)[:65536]
        crs, transform, nodata = src.crs, src.transform, src.nodata
    pixel_m2: float | None = None
    if crs is not None and crs.is_projected:
        unit = crs.linear_units_factor[1]
        pixel_m2 = abs(transform.a * transform.e - transform.b * transform.d) * unit * unit
    classes = []
    for c in meta.classes:
        n = int(counts[c.id])
        classes.append(
            {
                "id": c.id,
                "name": c.name,
                "color": c.color,
                "pixels": n,
                "area_ha": None if pixel_m2 is None else round(n * pixel_m2 / 1e4, 4),
            }
        )
    return {
        "classes": classes,
        "nodata_pixels": int(counts[int(nodata)]) if nodata is not None else 0,
        "crs": crs.to_string() if crs else None,
        "pixel_area_m2": pixel_m2,
    }


def _png(rgba: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _rgb_bands(meta: PackageMeta, count: int) -> list[int]:
    """1-based band numbers for a quicklook: red/green/blue by name when present, else the first three."""
    names = [b.lower() for b in meta.bands]
    if all(n in names for n in ("red", "green", "blue")) and count == len(names):
        return [names.index(n) + 1 for n in ("red", "green", "blue")]
    return [1, 2, 3] if count >= 3 else [1, 1, 1]


def _stretch(a: np.ndarray) -> np.ndarray:
    out = np.zeros(a.shape, np.uint8)
    for i, band in enumerate(a):
        valid = np.isfinite(band)
        if valid.any():
            lo, hi = np.percentile(band[valid], [2, 98])
            scaled = (band - lo) / max(hi - lo, 1e-9) * 255
            out[i] = np.clip(np.nan_to_num(scaled), 0, 255).astype(np.uint8)
    return out


def render_preview(image: Path, class_map: Path, meta: PackageMeta) -> dict[str, Any]:
    """Image quicklook and coloured class map as PNG data URLs, with their bounds in lat/lon (Leaflet order)."""
    with rasterio.open(image) as src:
        scale = max(1.0, max(src.width, src.height) / MAX_SIDE)
        h, w = max(1, round(src.height / scale)), max(1, round(src.width / scale))
        bands = _rgb_bands(meta, src.count)
        rgb = src.read(bands, out_shape=(3, h, w), resampling=Resampling.average, masked=True)
        rgb = rgb.astype(np.float32).filled(np.nan)
        src_crs, bounds = src.crs, src.bounds
    with rasterio.open(class_map) as src:
        classes = src.read(1, out_shape=(h, w), resampling=Resampling.nearest)
        nodata = src.nodata
    src_transform = rasterio.transform.from_bounds(*bounds, w, h)
    dst_transform, dw, dh = calculate_default_transform(src_crs, WEB_MERCATOR, w, h, *bounds)
    dw, dh = int(dw or w), int(dh or h)
    rgb_3857 = np.full((3, dh, dw), np.nan, np.float32)
    reproject(
        rgb, rgb_3857, src_transform=src_transform, src_crs=src_crs, dst_transform=dst_transform,
        dst_crs=WEB_MERCATOR, resampling=Resampling.bilinear, src_nodata=np.nan, dst_nodata=np.nan,
    )  # fmt: skip
    fill = 65535 if nodata is None else int(nodata)
    cls_3857 = np.full((dh, dw), fill, classes.dtype)
    reproject(
        classes, cls_3857, src_transform=src_transform, src_crs=src_crs, dst_transform=dst_transform,
        dst_crs=WEB_MERCATOR, resampling=Resampling.nearest, src_nodata=fill, dst_nodata=fill,
    )  # fmt: skip
    image_rgba = np.zeros((dh, dw, 4), np.uint8)
    image_rgba[..., :3] = np.moveaxis(_stretch(rgb_3857), 0, -1)
    image_rgba[..., 3] = np.where(np.isfinite(rgb_3857).all(0), 255, 0)
    map_rgba = np.zeros((dh, dw, 4), np.uint8)
    for c in meta.classes:
        hexa = c.color.lstrip("#")
        sel = cls_3857 == c.id
        map_rgba[sel] = (int(hexa[0:2], 16), int(hexa[2:4], 16), int(hexa[4:6], 16), 255)
    left, top = dst_transform.c, dst_transform.f
    right, bottom = left + dst_transform.a * dw, top + dst_transform.e * dh
    west, south, east, north = transform_bounds(WEB_MERCATOR, "EPSG:4326", left, bottom, right, top)
    return {
        "bounds": [[south, west], [north, east]],
        "image": _png(image_rgba),
        "map": _png(map_rgba),
        "legend": [{"id": c.id, "name": c.name, "color": c.color} for c in meta.classes],
    }
