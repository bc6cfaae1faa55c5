"""Time stacks: one preparation recipe applied to every date of a scene, on one grid, date-major channels.

A time stack is given either as dated files (``inputs.images`` as a mapping ``date -> files``; on the command
line and in ``scene.json`` as ``DATE=PATH`` strings) or as a NetCDF/Zarr cube (``inputs.cube``, read lazily by
:mod:`eoforge.temporal.cube`). :class:`DatedSource` has the interface of
:class:`~eoforge.prepare.recipe.RecipeSource` (``grid``, ``count``, ``band_names``, ``read(window)``,
``close()``); ``read`` returns the channels date-major, ``(time * channel, h, w)``: channel ``t * C + c`` is
channel ``c`` (bands, then indices computed on that date) of date ``t``. Prepare and predict read through it,
so the date selection and the optional temporal interpolation are the same in both.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import date
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rasterio.windows import Window

from eoforge.errors import InputError
from eoforge.geo import Grid
from eoforge.io.rasters import block_windows
from eoforge.prepare import indices as idx
from eoforge.prepare.recipe import Images, Recipe, RecipeSource

log = logging.getLogger(__name__)

_DATED = re.compile(r"^(\d{4}-\d{2}-\d{2})=(.+)$")


def dated_strings(mapping: Mapping[str, Sequence[Any]]) -> list[str | list[str]]:
    """A ``date -> files`` mapping as the flat ``DATE=PATH`` list stored in ``scene.json`` and given to predict
    (a mosaic entry stays a list)."""
    out: list[str | list[str]] = []
    for d in sorted(mapping):
        for e in mapping[d]:
            out.append([f"{d}={q}" for q in e] if isinstance(e, list | tuple) else f"{d}={e}")
    return out


def strip_date(entry: str | Path) -> str:
    """The path of a ``DATE=PATH`` string (any other string unchanged)."""
    m = _DATED.match(str(entry))
    return m.group(2) if m else str(entry)


def split_dates(images: Images | Mapping[str, Any]) -> dict[str, list[Any]] | None:
    """``date -> entries`` of dated images (a mapping, or ``DATE=PATH`` strings); None for undated ones."""
    if isinstance(images, Mapping):
        return {str(k): list(v) for k, v in sorted(images.items())}
    out: dict[str, list[Any]] = {}
    undated = []
    for e in images:
        items = [str(q) for q in e] if isinstance(e, list | tuple) else [str(e)]
        found = {m.group(1) if m else None for m in map(_DATED.match, items)}
        if None in found or len(found) != 1:
            undated.append(items[0])
            continue
        d = found.pop()
        assert d is not None  # for mypy: None was excluded above
        paths = [strip_date(q) for q in items]
        out.setdefault(d, []).append(paths if isinstance(e, list | tuple) else paths[0])
    if out and undated:
        raise InputError(
            f"{undated[0]}: no date while other images are dated; give every image as DATE=PATH (YYYY-MM-DD)"
        )
    for d in out:
        _check_date(d)
    return out or None


def _check_date(d: str) -> None:
    try:
        date.fromisoformat(d)
    except ValueError:
        raise InputError(f"date '{d}' is not a valid ISO date; write dates as YYYY-MM-DD") from None


def select_dates(wanted: Sequence[str], given: Sequence[str], where: str) -> list[str]:
    """The given dates that stand for the recipe's ``wanted`` ones: the same dates when all are given (extra
    dates are left out), else the given dates in time order when there are exactly as many (another season)."""
    given = sorted(given)
    if all(d in given for d in wanted):
        extra = [d for d in given if d not in wanted]
        if extra:
            log.info("%s: dates %s are not in the recipe; left out", where, ", ".join(extra))
        return list(wanted)
    if len(given) == len(wanted):
        log.info(
            "%s: dates %s stand for the recipe's %s (same count, time order)",
            where,
            ", ".join(given),
            ", ".join(wanted),
        )
        return given
    missing = [d for d in wanted if d not in given]
    raise InputError(
        f"{where}: the model uses {len(wanted)} dates ({', '.join(wanted)}) but date(s) {', '.join(missing)} "
        f"are not given ({len(given)} given); give the same dates, or as many dates of another period"
    )


def interpolate_linear(stack: np.ndarray, days: np.ndarray) -> np.ndarray:
    """Fill NaN gaps of a ``(time, ...)`` array linearly along time at positions ``days``; before the first
    and after the last valid date the nearest valid value is kept; all-NaN series stay NaN.

    Hand-written (vectorised over pixels with running previous/next valid indices) because xarray's
    ``interpolate_na`` plus ``ffill``/``bfill`` needs bottleneck and works through a DataArray per block.
    """
    t = stack.shape[0]
    valid = ~np.isnan(stack)
    if valid.all() or t < 2:
        return stack
    shape = (t,) + (1,) * (stack.ndim - 1)
    pos = np.arange(t).reshape(shape)
    prev = np.maximum.accumulate(np.where(valid, pos, -1), axis=0)
    nxt = np.flip(np.minimum.accumulate(np.flip(np.where(valid, pos, t), 0), axis=0), 0)
    has_prev, has_next = prev >= 0, nxt < t
    p, n = np.clip(prev, 0, t - 1), np.clip(nxt, 0, t - 1)
    vp = np.take_along_axis(stack, p, 0)
    vn = np.take_along_axis(stack, n, 0)
    dp, dn, dt = days[p], days[n], days.reshape(shape).astype(np.float64)
    span = np.where(dn > dp, dn - dp, 1.0)
    w = np.clip((dt - dp) / span, 0.0, 1.0)
    both = vp + (vn - vp) * w
    out = np.where(has_prev & has_next, both, np.where(has_prev, vp, vn))
    return np.where(valid, stack, out).astype(stack.dtype, copy=False)


def _days(dates: Sequence[str]) -> np.ndarray:
    return np.asarray([date.fromisoformat(d).toordinal() for d in dates], dtype=np.float64)


class DatedSource:
    """A time-stack :class:`Recipe` (``recipe.dates`` set) applied to dated files or to a cube; see the module
    doc. ``grid``, ``masks``, ``aoi`` and ``aoi_crs`` are those of :class:`RecipeSource` (prepare only);
    ``date_masks`` adds masks to one date only (date -> (path, classes, bits)), so a pixel masked on that date
    is a gap of that date alone."""

    def __init__(
        self,
        recipe: Recipe,
        images: Images | Mapping[str, Any],
        grid: Grid | None = None,
        masks: Sequence[tuple[str, Sequence[int], Sequence[int]]] = (),
        aoi: str | Path | Sequence[float] | None = None,
        aoi_crs: str | None = None,
        date_masks: Mapping[str, Sequence[tuple[str, Sequence[int], Sequence[int]]]] | None = None,
    ) -> None:
        if not recipe.dates:
            raise InputError("a time-stack source needs a recipe with dates")
        self.recipe = recipe
        self.interpolate = recipe.interpolate
        self._sources: list[RecipeSource] = []
        self._cube: Any = None
        self._cube_index: list[int] = []
        per_date = replace(recipe, dates=(), interpolate=None, cube=None)
        if recipe.cube is not None:
            self._open_cube(recipe, images, grid, [*masks, *(date_masks or {}).values()], aoi)
        else:
            by_date = split_dates(images)
            if by_date is None:
                raise InputError(
                    f"{strip_date(_first(images))}: the model reads a time stack of {len(recipe.dates)} dates "
                    f"({', '.join(recipe.dates)}); give the images as DATE=PATH (YYYY-MM-DD=file.tif)"
                )
            self.dates = select_dates(recipe.dates, list(by_date), strip_date(_first(images)))
            try:
                for d in self.dates:
                    try:
                        src = RecipeSource(
                            per_date,
                            by_date[d],
                            grid=grid if grid is not None or not self._sources else self._sources[0].grid,
                            masks=[*masks, *(date_masks or {}).get(d, ())],
                            aoi=aoi,
                            aoi_crs=aoi_crs,
                        )
                    except InputError as exc:
                        raise InputError(f"date {d}: {exc}") from None
                    self._sources.append(src)
            except Exception:
                self.close()
                raise
            self.grid = self._sources[0].grid
            self.per_date = self._sources[0].band_names
        self.days = _days(self.dates)
        self.count = len(self.dates) * len(self.per_date)
        self.block_shape = (512, 512)

    def _open_cube(
        self,
        recipe: Recipe,
        images: Images | Mapping[str, Any],
        grid: Grid | None,
        masks: Sequence[Any],
        aoi: Any,
    ) -> None:
        from eoforge.temporal.cube import open_cube

        assert recipe.cube is not None  # for mypy: the caller checked
        if isinstance(images, Mapping) or len(images) != 1 or isinstance(images[0], list | tuple):
            raise InputError(
                "the model reads a NetCDF/Zarr cube; give the one cube file (.nc or .zarr) as the image"
            )
        if grid is not None or masks or aoi is not None:
            raise InputError(
                "inputs.cube: prepare.grid.like, mask files and prepare.aoi are not applied to cubes; "
                "crop and mask the cube beforehand or give dated files"
            )
        variables, time = recipe.cube
        cube = open_cube(str(images[0]), list(variables), time)
        if cube.crs is None:
            raise InputError(
                f"{cube.path}: the cube has no CRS (no grid_mapping / spatial_ref variable); add one"
            )
        self._cube = cube
        all_dates = [str(d) for d in cube.dates]
        if len(set(all_dates)) != len(all_dates):
            raise InputError(f"{cube.path}: two time steps fall on one day; one step per date is supported")
        self.dates = select_dates(recipe.dates, all_dates, str(cube.path))
        self._cube_index = [all_dates.index(d) for d in self.dates]
        _, _, h, w = cube.shape
        self.grid = Grid(str(cube.crs), cube.transform, h, w)
        self._index_symbols = [(n, idx.resolve(n, list(variables))) for n in recipe.indices]
        self.per_date = [*variables, *recipe.indices]

    @property
    def band_names(self) -> list[str]:
        """Channel names, date-major: ``DATE/channel``."""
        return [f"{d}/{c}" for d in self.dates for c in self.per_date]

    @property
    def described_names(self) -> list[str] | None:
        return None  # per-date files carry one date's descriptions; the count is checked instead

    @property
    def paths(self) -> list[Path]:
        if self._cube is not None:
            return [Path(self._cube.path)]
        return [p for s in self._sources for p in s.paths]

    def read_dates(self, window: Window | None = None) -> np.ndarray:
        """``(time, channel, h, w)`` float32 with NaN at nodata, before any interpolation."""
        window = window or Window(0, 0, self.grid.width, self.grid.height)
        if self._cube is None:
            return np.stack([s.read(window) for s in self._sources])
        r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        raw = self._cube.read_window(r, c, h, w)[self._cube_index]
        if self.recipe.nodata_rule == "any":
            bad = np.isnan(raw).any(axis=1, keepdims=True)
            raw = np.where(bad, np.float32(np.nan), raw)
        if self._index_symbols:
            extra = [
                np.stack([idx.compute(n, raw[t], s) for t in range(len(raw))])[:, None]
                for n, s in self._index_symbols
            ]
            raw = np.concatenate([raw, *extra], axis=1)
        return raw.astype(np.float32, copy=False)

    def read(self, window: Window | None = None) -> np.ndarray:
        """The prepared channels, date-major ``(time * channel, h, w)``, gaps filled when the recipe says so."""
        stack = self.read_dates(window)
        if self.interpolate == "linear":
            stack = interpolate_linear(stack, self.days)
        t, c, h, w = stack.shape
        return stack.reshape(t * c, h, w)

    def close(self) -> None:
        for s in self._sources:
            s.close()

    def __enter__(self) -> DatedSource:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _first(images: Images | Mapping[str, Any]) -> str:
    if isinstance(images, Mapping):
        return str(next(iter(images), "images"))
    if not images:
        return "images"
    e = images[0]
    return str(e[0] if isinstance(e, list | tuple) else e)


def valid_fractions(source: DatedSource, block: int = 512) -> dict[str, float]:
    """Per date, the fraction of the pixels valid on any date that are valid on that date (one streamed pass)."""
    valid = np.zeros(len(source.dates), dtype=np.int64)
    anywhere = 0
    for win in block_windows(source.grid, block):
        v = ~np.isnan(source.read_dates(win)).all(axis=1)  # (time, h, w)
        any_date = v.any(axis=0)
        anywhere += int(any_date.sum())
        valid += v.reshape(len(v), -1).sum(axis=1)
    return {d: (float(n) / anywhere if anywhere else 0.0) for d, n in zip(source.dates, valid, strict=True)}
