"""Alignment: the target grid rule, and files read window by window onto that grid (``WarpedVRT``).

Default grid: the CRS of the first file, the finest resolution among the inputs (in that CRS), over the union
of the files of one band (a mosaic) intersected across bands (a stack), snapped to the pixel grid of a file
that already has that CRS and resolution (so native bands are read without resampling).
"""

from __future__ import annotations

import logging
import math
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform, transform_bounds
from rasterio.windows import Window

from eoforge.errors import DataError, InputError
from eoforge.geo import Grid
from eoforge.io.rasters import RasterStack, grid_of, open_raster

log = logging.getLogger(__name__)

Bounds = tuple[float, float, float, float]


def _crs_of(path: Path, src: rasterio.DatasetReader) -> str:
    if src.crs is None:
        raise DataError(f"{path}: raster has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
    return str(src.crs.to_string())


def _res_in(src: rasterio.DatasetReader, crs: str) -> tuple[float, float]:
    """Pixel size (x, y) of ``src`` expressed in ``crs`` units (a reprojected file gets square pixels)."""
    if src.crs.to_string() == crs:
        return float(abs(src.transform.a)), float(abs(src.transform.e))
    tr, _, _ = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
    r = float(min(abs(tr.a), abs(tr.e)))
    return r, r


def _intersect(a: Bounds, b: Bounds) -> Bounds | None:
    out = (max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3]))
    return out if out[0] < out[2] and out[1] < out[3] else None


def target_grid(
    groups: Sequence[Sequence[Path]],
    crs: str | None = None,
    resolution: float | None = None,
    aoi: Bounds | None = None,
    aoi_crs: str | None = None,
) -> Grid:
    """The grid all inputs are warped onto (see the module doc); ``aoi`` bounds crop it."""
    first = groups[0][0]
    infos: list[list[tuple[Path, rasterio.DatasetReader]]] = []
    try:
        for g in groups:
            infos.append([(p, open_raster(p)) for p in g])
        crs = crs or _crs_of(first, infos[0][0][1])
        if resolution is not None:
            xres = yres = float(resolution)
        else:  # the finest input, keeping its exact (possibly non-square) pixel size
            xres, yres = min(
                (_res_in(s, crs) for grp in infos for p, s in grp if _crs_of(p, s)), key=lambda r: r[0] * r[1]
            )
        extent: Bounds | None = None
        for gi, grp in enumerate(infos):
            union = None
            for _, s in grp:
                b = transform_bounds(s.crs, crs, *s.bounds, densify_pts=21)
                union = (
                    b
                    if union is None
                    else (min(union[0], b[0]), min(union[1], b[1]), max(union[2], b[2]), max(union[3], b[3]))
                )
            assert union is not None  # every group holds at least one file
            if gi == 0:
                extent = union
            else:
                assert extent is not None
                hit = _intersect(extent, union)
                if hit is None:
                    raise InputError(
                        f"{grp[0][0]}: does not overlap {first}; give inputs that cover a common area"
                    )
                extent = hit
        assert extent is not None
        if aoi is not None:
            ab = transform_bounds(aoi_crs or crs, crs, *aoi, densify_pts=21)
            hit = _intersect(extent, ab)
            if hit is None:
                raise InputError(
                    f"prepare.aoi {tuple(round(v, 3) for v in aoi)} lies outside the data "
                    f"{tuple(round(v, 1) for v in extent)} ({crs}); check the AOI and prepare.aoi_crs"
                )
            extent = hit
        anchor = next(
            (
                s.transform
                for grp in infos
                for p, s in grp
                if s.crs.to_string() == crs
                and math.isclose(abs(s.transform.a), xres, rel_tol=1e-9)
                and math.isclose(abs(s.transform.e), yres, rel_tol=1e-9)
            ),
            None,
        )
        ax, ay = (anchor.c, anchor.f) if anchor is not None else (0.0, 0.0)
        x0 = ax + math.floor((extent[0] - ax) / xres + 1e-6) * xres
        y0 = ay - math.floor((ay - extent[3]) / yres + 1e-6) * yres
        width = max(1, math.ceil((extent[2] - x0) / xres - 1e-6))
        height = max(1, math.ceil((y0 - extent[1]) / yres - 1e-6))
        return Grid(crs, rasterio.Affine(xres, 0.0, x0, 0.0, -yres, y0), height, width)
    finally:
        for grp in infos:
            for _, s in grp:
                s.close()


def grid_like(path: str | Path) -> Grid:
    with open_raster(path) as src:
        _crs_of(Path(path), src)
        return grid_of(src)


class GridReader:
    """One raster file read on ``grid`` by window: float32 ``(bands, h, w)``, NaN at nodata and outside the file.

    A file already on the grid is read directly (masks, alpha and per-band nodata as in
    :class:`~eoforge.io.rasters.RasterStack`); any other is warped window by window through a ``WarpedVRT``
    (its alpha band, if any, is the warp's source alpha). Each band keeps its own nodata (``nodata``, else the
    file's per-band value) and a band's nodata is NaN in that band only (``UNIFIED_SRC_NODATA=NO``). When the
    bands' values differ, the warp reads the file through a float32 VRT that turns each band's nodata into NaN
    (:func:`_nan_vrt`), because ``WarpedVRT`` takes one source nodata for all bands.
    """

    def __init__(
        self,
        path: str | Path,
        grid: Grid,
        resampling: str = "bilinear",
        nodata: Sequence[float | None] | None = None,
        dtype: str = "float32",
    ) -> None:
        self.path = Path(path)
        self._src = open_raster(self.path)
        try:
            _crs_of(self.path, self._src)
            s = self._src
            self.indexes = [i + 1 for i, ci in enumerate(s.colorinterp) if ci != ColorInterp.alpha] or [1]
            self.count = len(self.indexes)
            alpha = [i + 1 for i, ci in enumerate(s.colorinterp) if ci == ColorInterp.alpha]
            nd = list(nodata) if nodata is not None else [None] * self.count
            if len(nd) != self.count:
                raise InputError(f"{self.path}: {len(nd)} nodata values for {self.count} bands")
            self.warped = not (s.crs.to_string() == grid.crs and grid_of(s).same_as(grid))
            self._direct: RasterStack | None = None
            self._vrt: WarpedVRT | None = None
            self._nan_src: rasterio.DatasetReader | None = None
            self.dtype = dtype
            if not self.warped:
                self._direct = RasterStack([self.path], nodata=nd)
            else:
                src_nd = [
                    v if v is not None else s.nodatavals[i - 1] for v, i in zip(nd, self.indexes, strict=True)
                ]
                kw: dict[str, object] = {}
                warp_src = s
                if len({_nd_key(v) for v in src_nd}) > 1:
                    self._nan_src = rasterio.open(_nan_vrt(s, self.path, self.indexes, src_nd, alpha[:1]))
                    warp_src, src_nd = self._nan_src, [float("nan")]
                    self.indexes = list(range(1, self.count + 1))
                    if alpha:
                        kw["src_alpha"] = self.count + 1
                elif alpha:
                    kw["src_alpha"] = alpha[0]
                self._vrt = WarpedVRT(
                    warp_src,
                    crs=grid.crs,
                    transform=grid.transform,
                    width=grid.width,
                    height=grid.height,
                    resampling=Resampling[resampling],
                    src_nodata=src_nd[0],
                    nodata=np.nan if dtype == "float32" else _int_fill(dtype),
                    dtype=dtype,
                    UNIFIED_SRC_NODATA="NO",  # a band's nodata masks that band only (GDAL's default: all bands)
                    **kw,
                )
        except Exception:
            self.close()
            raise

    def read(self, window: Window) -> np.ndarray:
        if self._direct is not None:
            return self._direct.read(window)
        assert self._vrt is not None
        try:
            return np.asarray(self._vrt.read(self.indexes, window=window))
        except RasterioIOError as exc:
            raise DataError(
                f"{self.path}: read failed ({exc}); the file may be truncated or corrupt"
            ) from None

    def close(self) -> None:
        if getattr(self, "_direct", None) is not None:
            self._direct.close()  # type: ignore[union-attr]
        if getattr(self, "_vrt", None) is not None:
            self._vrt.close()  # type: ignore[union-attr]
        if getattr(self, "_nan_src", None) is not None:
            self._nan_src.close()  # type: ignore[union-attr]
        self._src.close()

    def __enter__(self) -> GridReader:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _nd_key(v: float | None) -> str:
    return "none" if v is None else repr(float(v))  # NaN == NaN here


def _nan_vrt(
    src: rasterio.DatasetReader,
    path: Path,
    indexes: Sequence[int],
    nodata: Sequence[float | None],
    alpha: Sequence[int],
) -> str:
    """VRT XML of ``src``'s bands ``indexes`` as float32 with NaN where each equals its own ``nodata`` (GDAL's
    ComplexSource NODATA), then the alpha band unchanged. Written here because rasterio builds VRTs with one
    nodata for all bands only; the XML is GDAL's documented VRT format (gdal.org/drivers/raster/vrt.html)."""
    root = ET.Element("VRTDataset", rasterXSize=str(src.width), rasterYSize=str(src.height))
    ET.SubElement(root, "SRS").text = src.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(float(v)) for v in src.transform.to_gdal())
    bands = [(i, v, "Float32") for i, v in zip(indexes, nodata, strict=True)]
    bands += [(a, None, "") for a in alpha]
    for k, (i, v, dt) in enumerate(bands, 1):
        is_alpha = not dt
        gdal_type = _GDAL_TYPES.get(src.dtypes[i - 1], "Float32") if is_alpha else dt
        band = ET.SubElement(root, "VRTRasterBand", dataType=gdal_type, band=str(k))
        if is_alpha:
            ET.SubElement(band, "ColorInterp").text = "Alpha"
        else:
            ET.SubElement(band, "NoDataValue").text = "nan"
        source = ET.SubElement(band, "ComplexSource")
        ET.SubElement(source, "SourceFilename", relativeToVRT="0").text = str(path)
        ET.SubElement(source, "SourceBand").text = str(i)
        if v is not None:
            ET.SubElement(source, "NODATA").text = repr(float(v))
    return ET.tostring(root, encoding="unicode")


_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


def _int_fill(dtype: str) -> int:
    """Fill value outside an integer mask file: the dtype's maximum (never a listed class or set bit pattern
    we would mistake for a mask hit, since bits are tested only inside the file)."""
    return int(np.iinfo(np.dtype(dtype)).max)


def combine(arrays: Sequence[np.ndarray], rule: str) -> np.ndarray:
    """Merge mosaic tiles read on the same window: first/last valid pixel wins, or the nan-mean/median."""
    if len(arrays) == 1:
        return arrays[0]
    if rule in ("first", "last"):
        seq = list(arrays) if rule == "first" else list(arrays)[::-1]
        out = seq[0].copy()
        for a in seq[1:]:
            hole = np.isnan(out) & ~np.isnan(a)
            out[hole] = a[hole]
        return out
    stack = np.stack(arrays)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels stay NaN
        out = np.nanmean(stack, axis=0) if rule == "mean" else np.nanmedian(stack, axis=0)
    return np.asarray(out, dtype=np.float32)
