"""A band stack over one or more raster files on the same grid, read window by window."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from eoforge.errors import DataError, InputError
from eoforge.geo import Grid

log = logging.getLogger(__name__)


def open_raster(path: str | Path) -> rasterio.DatasetReader:
    """Open a raster, turning missing or unreadable files into one-line errors."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found; check the path")
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        raise DataError(
            f"{path}: not a readable raster ({str(exc).splitlines()[0]}); give a GeoTIFF or another GDAL format"
        ) from None


def grid_of(src: rasterio.DatasetReader) -> Grid:
    crs = src.crs.to_string() if src.crs else ""
    return Grid(crs=crs, transform=src.transform, height=src.height, width=src.width)


class RasterStack:
    """Bands of several files on one grid, stacked in the order given.

    ``read(window)`` returns float32 ``(bands, h, w)`` with NaN wherever any band is nodata, so downstream
    code handles one nodata convention. ``nodata`` overrides the files' own nodata values.
    """

    def __init__(self, paths: Sequence[str | Path], nodata: float | None = None) -> None:
        if not paths:
            raise InputError("no input images given; list at least one raster in inputs.images")
        self.paths = [Path(p) for p in paths]
        self._srcs = []
        try:
            for p in self.paths:
                self._srcs.append(open_raster(p))
            first = self._srcs[0]
            if first.crs is None:
                raise DataError(f"{self.paths[0]}: raster has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
            self.grid = grid_of(first)
            for p, s in zip(self.paths[1:], self._srcs[1:], strict=True):
                g = grid_of(s)
                if not g.same_as(self.grid) or s.crs != first.crs:
                    raise DataError(
                        f"{p}: grid ({g.width}x{g.height}, {g.crs}) differs from {self.paths[0]} "
                        f"({self.grid.width}x{self.grid.height}, {self.grid.crs}); resample it onto the same grid"
                    )
        except Exception:
            self.close()
            raise
        self._nodata = [nodata if nodata is not None else s.nodata for s in self._srcs]
        self.count = sum(s.count for s in self._srcs)
        self.block_shape = first.block_shapes[0]

    @property
    def band_labels(self) -> list[str]:
        """Default band names: file stem, plus the band number for multi-band files."""
        out = []
        for p, s in zip(self.paths, self._srcs, strict=True):
            out.extend([p.stem] if s.count == 1 else [f"{p.stem}_b{i}" for i in range(1, s.count + 1)])
        return out

    def read(self, window: Window | None = None) -> np.ndarray:
        """Read the stack in ``window`` (inside the raster) as float32 with NaN at nodata."""
        parts = []
        for p, s, nd in zip(self.paths, self._srcs, self._nodata, strict=True):
            try:
                a = s.read(window=window).astype(np.float32, copy=False)
            except RasterioIOError as exc:
                raise DataError(f"{p}: read failed ({exc}); the file may be truncated or corrupt") from None
            if nd is not None:
                a[np.isnan(a) if np.isnan(nd) else (a == np.float32(nd))] = np.nan
            parts.append(a)
        out = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        invalid = np.isnan(out).any(axis=0)
        if invalid.any():
            out[:, invalid] = np.nan
        return out

    def close(self) -> None:
        for s in self._srcs:
            s.close()

    def __enter__(self) -> RasterStack:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def block_windows(grid: Grid, block: int = 512) -> list[Window]:
    """Square windows of ``block`` rows and columns covering the grid (the last ones cropped)."""
    return [
        Window(c, r, min(block, grid.width - c), min(block, grid.height - r))
        for r in range(0, grid.height, block)
        for c in range(0, grid.width, block)
    ]
