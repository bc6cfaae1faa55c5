"""A band stack over one or more raster files on the same grid, read window by window."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import rasterio
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
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
        src = rasterio.open(path)
    except RasterioIOError as exc:
        raise DataError(
            f"{path}: not a readable raster ({str(exc).splitlines()[0]}); give a GeoTIFF or another GDAL format"
        ) from None
    complex_ = sorted({d for d in src.dtypes if "complex" in d})
    if complex_:  # read as float32 they would silently lose their imaginary part
        src.close()
        raise DataError(
            f"{path}: holds complex values ({', '.join(complex_)}), which eoforge reads as real numbers; "
            "compute the amplitude (and phase) first, e.g. gdal_calc.py --calc='abs(A)', and give those bands"
        )
    return src


def grid_of(src: rasterio.DatasetReader) -> Grid:
    crs = src.crs.to_string() if src.crs else ""
    return Grid(crs=crs, transform=src.transform, height=src.height, width=src.width)


def nearest_on_grid(
    src: rasterio.DatasetReader, grid: Grid, what: str, nodata: float | None = None, add_alpha: bool = False
) -> rasterio.DatasetReader | WarpedVRT:
    """``src`` itself when it already lies on ``grid``, else a nearest-neighbour ``WarpedVRT`` onto it (class
    ids must never be blended). ``nodata``: the VRT's fill outside the source (default: the source's nodata);
    ``add_alpha``: mask what lies outside the source through an alpha band instead."""
    same = src.crs is not None and src.crs == rasterio.crs.CRS.from_user_input(grid.crs)
    if same and grid_of(src).same_as(grid):
        return src
    log.info("%s: warping the %s onto the grid (nearest neighbour)", src.name, what)
    extra = {} if nodata is None else {"nodata": nodata}
    return WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=Resampling.nearest,
        add_alpha=add_alpha,
        **extra,
    )


Nodata = float | Sequence[float | None] | None
NODATA_RULES = ("all", "any")


def valid_mask(img: np.ndarray) -> np.ndarray:
    """Valid pixels of a band stack ``(..., C, h, w)``: those not NaN in every band.

    The one rule used after reading: under ``nodata_rule: any`` the reader already made the whole pixel NaN, so
    "not all-NaN" is right for both rules.
    """
    out: np.ndarray = ~np.isnan(img).all(axis=-3)
    return out


def per_band_nodata(nodata: Nodata, count: int, where: str) -> list[float | None]:
    """One nodata value per band from a single value or a per-band list (checked against ``count``)."""
    if nodata is None or isinstance(nodata, int | float):
        return [None if nodata is None else float(nodata)] * count
    values = list(nodata)
    if len(values) != count:
        raise InputError(
            f"{where}: inputs.nodata lists {len(values)} values but the stack has {count} bands; "
            "give one value, or one per band"
        )
    return [None if v is None else float(v) for v in values]


def check_band_names(
    stack_names: Sequence[str] | None, model_names: Sequence[str], ignore: bool = False
) -> None:
    """Refuse files whose band names (descriptions) differ in order or set from the model's.

    ``stack_names`` is None when the files carry no band names: nothing to check. ``ignore`` overrides.
    """
    if ignore or stack_names is None or list(stack_names) == list(model_names):
        return
    raise InputError(
        f"band names of the images [{', '.join(stack_names)}] differ from the model's "
        f"[{', '.join(model_names)}]; give the bands in the model's order, or pass --ignore-band-names"
    )


class RasterStack:
    """Bands of several files on one grid, stacked in the order given.

    ``read(window)`` returns float32 ``(bands, h, w)`` with NaN at nodata. A band value is nodata where it equals
    the band's nodata value (``nodata`` overrides the files' own: one value, or one per band) or where the
    file's GDAL mask (per-dataset mask, internal mask band, alpha band) says so. Alpha bands are masks, never
    stack bands. Under ``nodata_rule="any"`` a pixel nodata in one band is NaN in every band; under ``"all"``
    (default) only that band is NaN, and the pixel is invalid only where every band is (see :func:`valid_mask`).
    """

    def __init__(self, paths: Sequence[str | Path], nodata: Nodata = None, nodata_rule: str = "all") -> None:
        if not paths:
            raise InputError("no input images given; list at least one raster in inputs.images")
        if nodata_rule not in NODATA_RULES:
            raise InputError(f"nodata_rule '{nodata_rule}' is unknown; use one of: {', '.join(NODATA_RULES)}")
        self.paths = [Path(p) for p in paths]
        self.nodata_rule = nodata_rule
        self._srcs: list[rasterio.DatasetReader] = []
        try:
            for p in self.paths:
                self._srcs.append(open_raster(p))
            first = self._srcs[0]
            for p, s in zip(self.paths, self._srcs, strict=True):
                if s.crs is None:
                    raise DataError(f"{p}: raster has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
            self.grid = grid_of(first)
            for p, s in zip(self.paths[1:], self._srcs[1:], strict=True):
                g = grid_of(s)
                if not g.same_as(self.grid) or s.crs != first.crs:
                    raise DataError(
                        f"{p}: grid ({g.width}x{g.height}, {g.crs}) differs from {self.paths[0]} "
                        f"({self.grid.width}x{self.grid.height}, {self.grid.crs}); resample it onto the same grid"
                    )
            # band indexes (1-based) of each file that are data, not alpha
            self._indexes = [
                [i + 1 for i, ci in enumerate(s.colorinterp) if ci != ColorInterp.alpha] or [1]
                for s in self._srcs
            ]
            self.count = sum(len(ix) for ix in self._indexes)
            given = per_band_nodata(nodata, self.count, str(self.paths[0]))
        except Exception:
            self.close()
            raise
        self._nodata: list[list[float | None]] = []
        k = 0
        for s, ix in zip(self._srcs, self._indexes, strict=True):
            self._nodata.append(
                [given[k + j] if given[k + j] is not None else s.nodatavals[i - 1] for j, i in enumerate(ix)]
            )
            k += len(ix)
        self._alpha = [
            [i + 1 for i, ci in enumerate(s.colorinterp) if ci == ColorInterp.alpha] for s in self._srcs
        ]
        self._masked = [_has_dataset_mask(s) for s in self._srcs]
        self.block_shape = first.block_shapes[0]

    @property
    def band_labels(self) -> list[str]:
        """Default band names: file stem, plus the band number for multi-band files."""
        out = []
        for p, ix in zip(self.paths, self._indexes, strict=True):
            out.extend([p.stem] if len(ix) == 1 else [f"{p.stem}_b{i}" for i in ix])
        return out

    @property
    def described_names(self) -> list[str] | None:
        """The files' band descriptions, when every stack band has one; else None."""
        names = [s.descriptions[i - 1] for s, ix in zip(self._srcs, self._indexes, strict=True) for i in ix]
        return [str(n) for n in names] if all(names) else None

    @property
    def band_names(self) -> list[str]:
        """Band descriptions when every band has one, else :attr:`band_labels`."""
        return self.described_names or self.band_labels

    def read(self, window: Window | None = None) -> np.ndarray:
        """Read the stack in ``window`` (inside the raster) as float32 with NaN at nodata."""
        parts = []
        for p, s, ix, nds, alpha, masked in zip(
            self.paths, self._srcs, self._indexes, self._nodata, self._alpha, self._masked, strict=True
        ):
            try:
                a = s.read(ix, window=window).astype(np.float32, copy=False)
                mask = None
                if alpha:  # an alpha band: 0 = transparent = nodata
                    mask = s.read(alpha[0], window=window) == 0
                elif masked:
                    mask = s.read_masks(ix[0], window=window) == 0
            except RasterioIOError as exc:
                raise DataError(f"{p}: read failed ({exc}); the file may be truncated or corrupt") from None
            for b, nd in enumerate(nds):
                if nd is not None:
                    a[b][np.isnan(a[b]) if np.isnan(nd) else (a[b] == np.float32(nd))] = np.nan
            if mask is not None and mask.any():
                a[:, mask] = np.nan
            parts.append(a)
        out = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        if self.nodata_rule == "any":
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


def _has_dataset_mask(src: rasterio.DatasetReader) -> bool:
    """True when the file has a per-dataset mask (internal/external mask band) or an alpha band."""
    flags = src.mask_flag_enums[0]
    return MaskFlags.per_dataset in flags or MaskFlags.alpha in flags


def block_windows(grid: Grid, block: int = 512) -> list[Window]:
    """Square windows of ``block`` rows and columns covering the grid (the last ones cropped)."""
    return [
        Window(c, r, min(block, grid.width - c), min(block, grid.height - r))
        for r in range(0, grid.height, block)
        for c in range(0, grid.width, block)
    ]
