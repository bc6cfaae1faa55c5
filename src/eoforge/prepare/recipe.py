"""The preparation recipe and the source that applies it: ONE code path for prepare (training) and predict.

:class:`Recipe` is a small frozen, JSON-serialisable description (band names and order, sensor, target grid
rule, resampling, mosaic rule, quality-band masks, nodata and its rule, indices, normalisation mode). It is
saved in ``scene.json`` and in the model package. :class:`RecipeSource` applies it to raw files and has the
interface of :class:`~eoforge.io.rasters.RasterStack` (``grid``, ``count``, ``band_names``,
``read(window) -> float32 (C, h, w)`` with NaN at nodata, ``close()``, context manager), so the prepare stage
and the predict engine read through the same object.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from rasterio.windows import Window

from eoforge.config import InputsConfig, PrepareConfig, resolve_images
from eoforge.errors import InputError
from eoforge.geo import Grid
from eoforge.io.rasters import NODATA_RULES, Nodata, RasterStack, per_band_nodata
from eoforge.prepare import indices as idx
from eoforge.prepare.align import GridReader, combine, grid_like, target_grid
from eoforge.prepare.labels import is_vector
from eoforge.prepare.masks import Mask, RasterMask, VectorMask, load_geometries
from eoforge.prepare.sensors import Sensor, get_sensor, quality_bits, quality_values, scale_offset

log = logging.getLogger(__name__)

RECIPE_VERSION = 2  # 2: percentile stretches are clipped to [0, 1] (eoforge.normalise.clamps); 1 did not clip
Images = Sequence[str | Path | Sequence[str | Path]]


@dataclass(frozen=True)
class Recipe:
    """How raw files become the model's input channels; see the module doc."""

    bands: tuple[str, ...]
    sensor: str | None = None
    crs: str | None = None
    resolution: float | None = None
    resampling: str = "bilinear"
    mosaic: str = "first"
    masks: tuple[tuple[str, str, tuple[int, ...]], ...] = ()  # (quality token, "classes"|"bits", values)
    nodata: float | tuple[float | None, ...] | None = None
    nodata_rule: str = "all"
    indices: tuple[str, ...] = ()
    normalize: str = "zscore"
    clip: tuple[float, float] = (2.0, 98.0)
    version: int = field(default=RECIPE_VERSION)
    dates: tuple[str, ...] = ()  # a time stack: its dates (channels date-major), see eoforge.prepare.dates
    interpolate: str | None = None  # "linear": gaps filled along time
    cube: tuple[tuple[str, ...], str] | None = None  # a NetCDF/Zarr cube: (variables, time dimension)

    @property
    def channels(self) -> list[str]:
        """Model input channels: the bands, then the indices (of every date, date-major, for a time stack)."""
        per_date = [*self.bands, *self.indices]
        return [f"{d}/{c}" for d in self.dates for c in per_date] if self.dates else per_date

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "bands": list(self.bands),
            "sensor": self.sensor,
            "grid": {"crs": self.crs, "resolution": self.resolution},
            "resampling": self.resampling,
            "mosaic": self.mosaic,
            "masks": [{"band": t, kind: list(v)} for t, kind, v in self.masks],
            "nodata": list(self.nodata) if isinstance(self.nodata, tuple) else self.nodata,
            "nodata_rule": self.nodata_rule,
            "indices": list(self.indices),
            "normalize": {"mode": self.normalize, "clip": list(self.clip)},
        } | (
            {
                "dates": list(self.dates),
                "interpolate": self.interpolate,
                "cube": {"variables": list(self.cube[0]), "time": self.cube[1]} if self.cube else None,
            }
            if self.dates
            else {}
        )

    @classmethod
    def from_json(cls, m: dict[str, Any]) -> Recipe:
        if int(m.get("version", 1)) > RECIPE_VERSION:
            raise InputError(
                f"preparation recipe version {m['version']} is newer than this eoforge reads "
                f"({RECIPE_VERSION}); upgrade eoforge"
            )
        nd = m.get("nodata")
        masks = []
        for mk in m.get("masks", []):
            kind = "classes" if "classes" in mk else "bits"
            masks.append((str(mk["band"]), kind, tuple(int(v) for v in mk[kind])))
        return cls(
            bands=tuple(m["bands"]),
            sensor=m.get("sensor"),
            crs=m.get("grid", {}).get("crs"),
            resolution=m.get("grid", {}).get("resolution"),
            resampling=m.get("resampling", "bilinear"),
            mosaic=m.get("mosaic", "first"),
            masks=tuple(masks),
            nodata=tuple(nd) if isinstance(nd, list) else nd,
            nodata_rule=m.get("nodata_rule", "all"),
            indices=tuple(m.get("indices", [])),
            normalize=m.get("normalize", {}).get("mode", "zscore"),
            clip=tuple(m.get("normalize", {}).get("clip", (2.0, 98.0))),
            version=int(m.get("version", 1)),
            dates=tuple(m.get("dates") or ()),
            interpolate=m.get("interpolate"),
            cube=(tuple(m["cube"]["variables"]), str(m["cube"]["time"])) if m.get("cube") else None,
        )


def recipe_from_config(
    inputs: InputsConfig, prep: PrepareConfig, band_names: Sequence[str], dates: Sequence[str] = ()
) -> Recipe:
    """The recipe of a run: ``band_names`` are the stack's band names found by :func:`discover_bands`
    (per date for a time stack, whose ``dates`` are given)."""
    sensor = get_sensor(inputs.sensor) if inputs.sensor else None
    crs, res = prep.grid.crs, prep.grid.resolution
    if prep.grid.like is not None:
        g = grid_like(prep.grid.like)
        crs, res = g.crs, abs(g.transform.a)
    masks = []
    for mk in inputs.masks:
        if mk.band is None:
            continue  # masks given by path belong to one scene; they are applied by prepare only
        if sensor is None or mk.band.lower() != (sensor.quality or "").lower():
            valid = sensor.quality if sensor and sensor.quality else "none"
            raise InputError(
                f"inputs.masks band '{mk.band}' is not the quality band of inputs.sensor "
                f"({inputs.sensor or 'not set'}; its quality band: {valid}); set inputs.sensor or give the mask a path"
            )
        if mk.classes is not None:
            masks.append((sensor.quality or mk.band, "classes", tuple(quality_values(sensor, mk.classes))))
        else:
            masks.append((sensor.quality or mk.band, "bits", tuple(quality_bits(sensor, mk.bits))))
    nd = inputs.nodata
    cube = None
    if inputs.cube is not None:
        cube = (tuple(band_names), inputs.cube.time)
    return Recipe(
        bands=tuple(band_names),
        sensor=inputs.sensor,
        crs=crs,
        resolution=res,
        resampling=prep.resampling,
        mosaic=prep.mosaic,
        masks=tuple(masks),
        nodata=tuple(nd) if isinstance(nd, list) else nd,
        nodata_rule=inputs.nodata_rule,
        indices=tuple(prep.indices),
        normalize=prep.normalize,
        clip=(float(prep.clip[0]), float(prep.clip[1])),
        dates=tuple(dates),
        interpolate=prep.interpolate if dates else None,
        cube=cube,
    )


@dataclass
class _Group:
    """Files of one stack entry (a single file, or the tiles of a mosaic) and their bands."""

    files: list[Path]
    names: list[str]
    scale: list[float]
    offset: list[float]
    readers: list[GridReader] = field(default_factory=list)


def _flatten(images: Images) -> list[Path]:
    return resolve_images([[str(q) for q in e] if not isinstance(e, str | Path) else str(e) for e in images])


def _entries(images: Images) -> list[list[Path]]:
    out = []
    for e in images:
        if isinstance(e, str | Path):
            out.extend([[p] for p in resolve_images([str(e)])])
        else:
            out.append(resolve_images([str(q) for q in e]))
    return out


def _sensor_groups(
    sensor: Sensor, images: Images, want: Sequence[str] | None
) -> tuple[list[_Group], dict[str, list[Path]]]:
    """Files matched to the sensor's bands by name; files of one band form a mosaic; the finest resolution wins."""
    by_token: dict[str, list[Path]] = {}
    quality: dict[str, list[Path]] = {}
    unknown = []
    for p in _flatten(images):
        tok = sensor.match(p)
        if tok is None:
            unknown.append(p)
        elif sensor.quality and tok.lower() == sensor.quality.lower():
            quality.setdefault(sensor.quality, []).append(p)
        elif tok in sensor.ignore:
            log.info("%s: %s is not a reflectance band of %s; not used", p, tok, sensor.name)
        else:
            by_token.setdefault(sensor.band(tok).token, []).append(p)
    if unknown:
        tokens = ", ".join(b.token for b in sensor.bands)
        raise InputError(
            f"{unknown[0]}: no {sensor.name} band name in the file name (expected one of {tokens}"
            f"{', ' + sensor.quality if sensor.quality else ''}); rename it or drop inputs.sensor"
        )
    for tok, files in by_token.items():  # a SAFE granule holds B02 at 10, 20 and 60 m: keep the finest
        by_res: dict[float, list[Path]] = {}
        for p in files:
            with RasterStack([p]) as st:
                by_res.setdefault(abs(st.grid.transform.a), []).append(p)
        if len(by_res) > 1:
            finest = min(by_res)
            log.info("%s: %d resolutions given; using %g m", tok, len(by_res), finest)
            by_token[tok] = by_res[finest]
    name_of = {b.token: b.name for b in sensor.bands}
    tok_of = {b.name: b.token for b in sensor.bands}
    order = [b.token for b in sensor.bands if b.token in by_token]
    if want is not None:
        missing = [n for n in want if n not in tok_of or tok_of[n] not in by_token]
        if missing:
            have = ", ".join(name_of[t] for t in order) or "none"
            raise InputError(
                f"{sensor.name}: no file for band(s) {', '.join(missing)} among the images (found: {have}); "
                "give the files of every band the model uses"
            )
        order = [tok_of[n] for n in want]
    if not order:
        raise InputError(f"{sensor.name}: no reflectance band among the images; give the band files")
    groups = []
    for tok in order:
        files = by_token[tok]
        so = [scale_offset(sensor, tok, p) for p in files]
        if len(set(so)) > 1:
            log.info(
                "%s: mosaic tiles have different scale/offset (processing baselines); applied per band", tok
            )
        groups.append(_Group(files, [name_of[tok]], [so[0][0]], [so[0][1]]))
    return groups, quality


class RecipeSource:
    """A :class:`Recipe` applied to raw files: aligned, mosaicked, scaled, masked, with indices appended.

    ``images`` are files, globs or lists of files (a mosaic of one entry); with a sensor, files are matched to
    bands by name. ``grid`` overrides the recipe's grid rule (``prepare.grid.like``); ``masks`` and ``aoi`` are
    scene-specific extras used by prepare (mask files, exclusion vectors, the area of interest).
    """

    def __init__(
        self,
        recipe: Recipe,
        images: Images,
        grid: Grid | None = None,
        masks: Sequence[tuple[str, Sequence[int], Sequence[int]]] = (),
        aoi: str | Path | Sequence[float] | None = None,
        aoi_crs: str | None = None,
        select_bands: bool = True,
    ) -> None:
        if recipe.nodata_rule not in NODATA_RULES:
            raise InputError(
                f"nodata_rule '{recipe.nodata_rule}' unknown; use one of {', '.join(NODATA_RULES)}"
            )
        if not images:
            raise InputError("no input images given; list at least one raster in inputs.images")
        self.recipe = recipe
        self._masks: list[Mask] = []
        self._groups: list[_Group] = []
        quality: dict[str, list[Path]] = {}
        sensor = get_sensor(recipe.sensor) if recipe.sensor else None
        try:
            if sensor is not None:
                self._groups, quality = _sensor_groups(sensor, images, recipe.bands if select_bands else None)
            else:
                self._groups = self._plain_groups(images)
            names = [n for g in self._groups for n in g.names]
            if sensor is None and select_bands and len(names) != len(recipe.bands):
                raise InputError(
                    f"{self._groups[0].files[0]}: the images hold {len(names)} bands but the recipe has "
                    f"{len(recipe.bands)} ({', '.join(recipe.bands)}); give the same bands in the same order"
                )
            self.band_names_raw = list(recipe.bands) if recipe.bands else names
            aoi_gdf = None
            aoi_bounds = None
            if isinstance(aoi, str | Path):
                crs0 = recipe.crs or _first_crs(self._groups[0].files[0])
                aoi_gdf = load_geometries(aoi, crs0, "AOI")
                aoi_bounds, aoi_crs = tuple(aoi_gdf.total_bounds), crs0
            elif aoi is not None:
                aoi_bounds = tuple(float(v) for v in aoi)
            self.grid = grid or target_grid(
                [g.files for g in self._groups],
                recipe.crs,
                recipe.resolution,
                aoi=aoi_bounds,
                aoi_crs=aoi_crs,
            )
            nds = per_band_nodata(
                list(recipe.nodata) if isinstance(recipe.nodata, tuple) else recipe.nodata,
                len(names),
                str(self._groups[0].files[0]),
            )
            if sensor is not None and recipe.nodata is None:  # the product's fill values, tagged or not
                nds = [sensor.fill(n) for n in names]
            k = 0
            warped = []
            for g in self._groups:
                for p in g.files:
                    r = GridReader(p, self.grid, recipe.resampling, nds[k : k + len(g.names)])
                    g.readers.append(r)
                    if r.count != len(g.names):
                        raise InputError(
                            f"{p}: {r.count} bands but the other files of its mosaic hold {len(g.names)}; "
                            "a mosaic joins files of the same bands"
                        )
                    if r.warped:
                        warped.append(p.name)
                k += len(g.names)
            if warped:
                log.info(
                    "warping %d file(s) onto the grid (%s, %g m, %s): %s",
                    len(warped),
                    self.grid.crs,
                    abs(self.grid.transform.a),
                    recipe.resampling,
                    ", ".join(warped[:8]) + (" ..." if len(warped) > 8 else ""),
                )
            for tok, kind, values in recipe.masks:
                files = quality.get(tok, [])
                if not files:
                    raise InputError(
                        f"the recipe masks with the {tok} band but no {tok} file is among the images; "
                        "give the quality band file too"
                    )
                for p in files:
                    self._masks.append(
                        RasterMask(
                            p,
                            self.grid,
                            values if kind == "classes" else (),
                            values if kind == "bits" else (),
                        )
                    )
            for path, classes, bits in masks:
                if is_vector(Path(path)):
                    self._masks.append(VectorMask(load_geometries(path, self.grid.crs, "mask"), self.grid))
                else:
                    if not classes and not bits:
                        raise InputError(f"{path}: a mask raster needs `classes` or `bits`; list the values")
                    self._masks.append(RasterMask(path, self.grid, classes, bits))
            if aoi_gdf is not None:
                self._masks.append(VectorMask(aoi_gdf.to_crs(self.grid.crs), self.grid, inside=True))
            self._index_symbols = [(n, idx.resolve(n, self.band_names_raw)) for n in recipe.indices]
        except Exception:
            self.close()
            raise
        self._scale = np.asarray([s for g in self._groups for s in g.scale], np.float32)[:, None, None]
        self._offset = np.asarray([o for g in self._groups for o in g.offset], np.float32)[:, None, None]
        self._scaled = bool((self._scale != 1).any() or (self._offset != 0).any())
        self.count = len(self.band_names_raw) + len(recipe.indices)
        self.block_shape = (512, 512)

    def _plain_groups(self, images: Images) -> list[_Group]:
        groups = []
        for files in _entries(images):
            with RasterStack([files[0]]) as st:
                names = st.band_names
            for p in files[1:]:
                with RasterStack([p]) as st:
                    if st.count != len(names):
                        raise InputError(
                            f"{p}: {st.count} bands but {files[0].name} of the same mosaic holds {len(names)}; "
                            "a mosaic joins files of the same bands"
                        )
            groups.append(_Group(files, names, [1.0] * len(names), [0.0] * len(names)))
        return groups

    @property
    def paths(self) -> list[Path]:
        return [p for g in self._groups for p in g.files]

    @property
    def band_names(self) -> list[str]:
        """Channel names: bands, then indices."""
        return [*self.band_names_raw, *self.recipe.indices]

    @property
    def described_names(self) -> list[str] | None:
        """Band descriptions of the files when every band has one (None with a sensor: names come from file names)."""
        if self.recipe.sensor:
            return None
        names = []
        for g in self._groups:
            with RasterStack([g.files[0]]) as st:
                d = st.described_names
            if d is None:
                return None
            names.extend(d)
        return names

    def read(self, window: Window | None = None) -> np.ndarray:
        """The prepared channels in ``window`` as float32 ``(C, h, w)`` with NaN at nodata."""
        window = window or Window(0, 0, self.grid.width, self.grid.height)
        parts = [combine([r.read(window) for r in g.readers], self.recipe.mosaic) for g in self._groups]
        out = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0].copy()
        if self._scaled:  # in place: ``out`` is a fresh array
            out *= self._scale
            out += self._offset
        if self._masks:
            masked = np.zeros(out.shape[1:], dtype=bool)
            for m in self._masks:
                masked |= m.read(window)
            out[:, masked] = np.nan
        if self.recipe.nodata_rule == "any":
            bad = np.isnan(out).any(axis=0)
            out[:, bad] = np.nan
        if self._index_symbols:
            out = np.concatenate([out, *[idx.compute(n, out, s)[None] for n, s in self._index_symbols]])
        return out.astype(np.float32, copy=False)

    def close(self) -> None:
        for g in self._groups:
            for r in g.readers:
                r.close()
        for m in self._masks:
            m.close()

    def __enter__(self) -> RecipeSource:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _first_crs(path: Path) -> str:
    with RasterStack([path]) as st:
        return st.grid.crs


def discover_bands(inputs: InputsConfig) -> list[str]:
    """Band names of a run's stack before any recipe exists: sensor names, inputs.bands, descriptions, stems
    (of the first date for a time stack; a cube's variables)."""
    if inputs.cube is not None:
        from eoforge.temporal.cube import open_cube

        return list(open_cube(inputs.cube.path, inputs.cube.variables, inputs.cube.time).bands)
    images: Images = (
        inputs.images[min(inputs.images)] if isinstance(inputs.images, dict) else inputs.images or []
    )
    if inputs.sensor:
        sensor = get_sensor(inputs.sensor)
        groups, _ = _sensor_groups(sensor, images, list(inputs.bands) if inputs.bands else None)
        return [n for g in groups for n in g.names]
    names: list[str] = []
    for files in _entries(images):
        with RasterStack([files[0]]) as st:
            names.extend(st.band_names)
    if inputs.bands is not None:
        if len(inputs.bands) != len(names):
            raise InputError(
                f"{_entries(images)[0][0]}: inputs.bands lists {len(inputs.bands)} names but the images "
                f"hold {len(names)} bands; give one name per band"
            )
        return list(inputs.bands)
    return names


def open_source(meta: Any, images: Images) -> Any:
    """The reader predict uses for a package (a :class:`RecipeSource`, a time-stack ``DatedSource``, or a plain
    :class:`RasterStack` for packages without a recipe, with their nodata and rule)."""
    recipe = getattr(meta, "recipe", None)
    if recipe:
        rec = Recipe.from_json(recipe)
        if rec.dates:
            from eoforge.prepare.dates import DatedSource

            return DatedSource(rec, images)
        return RecipeSource(rec, images)
    flat = _flatten(images)
    return RasterStack(flat, nodata=meta.nodata, nodata_rule=meta.nodata_rule)


def mask_specs(inputs: InputsConfig) -> list[tuple[str, list[int], list[int]]]:
    """Scene-specific masks of a run (given by path) for every date: (path, classes, bits)."""
    sensor = get_sensor(inputs.sensor) if inputs.sensor else None
    return [
        (str(m.path), quality_values(sensor, m.classes), quality_bits(sensor, m.bits))
        for m in inputs.masks
        if m.path is not None and m.date is None
    ]


def date_mask_specs(inputs: InputsConfig) -> dict[str, list[tuple[str, list[int], list[int]]]]:
    """Masks given by path for one date of a time stack (``date:``): date -> [(path, classes, bits)]."""
    sensor = get_sensor(inputs.sensor) if inputs.sensor else None
    out: dict[str, list[tuple[str, list[int], list[int]]]] = {}
    for m in inputs.masks:
        if m.path is None or m.date is None:
            continue
        if inputs.dates is None or m.date not in inputs.dates:
            where = f"the dates of inputs.images ({', '.join(inputs.dates)})" if inputs.dates else "no date"
            raise InputError(
                f"{m.path}: mask date {m.date} is not among {where}; give one of those dates, or drop `date` "
                "to mask every date"
            )
        out.setdefault(m.date, []).append(
            (str(m.path), quality_values(sensor, m.classes), quality_bits(sensor, m.bits))
        )
    return out


__all__ = [
    "Nodata",
    "Recipe",
    "RecipeSource",
    "date_mask_specs",
    "discover_bands",
    "mask_specs",
    "open_source",
    "recipe_from_config",
]
