"""Stage 1, prepare: apply the preparation recipe, rasterize the labels onto its grid, compute band statistics.

Everything runs block by block, so memory is bounded by the block size, not the scene. Outputs, in
``OUT/prepared/``: ``image.tif`` (float32 stack, NaN at nodata), ``labels.tif`` (uint8 class indices,
255 = unlabelled) and ``scene.json`` (grid, bands, classes, normalisation statistics, class counts, recipe).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from rasterio.windows import Window

from eoforge.config import IGNORE_INDEX, ComputeConfig, InputsConfig, PrepareConfig
from eoforge.errors import InputError
from eoforge.io.atomic import atomic_dir
from eoforge.io.blockcache import cachemax
from eoforge.io.rasters import block_windows, valid_mask
from eoforge.prepare.align import grid_like
from eoforge.prepare.dates import DatedSource, dated_strings, valid_fractions
from eoforge.prepare.labels import ClassMapper, burn, is_vector, label_reader, load_vector
from eoforge.prepare.parallel import SourceSpec, WindowReads
from eoforge.prepare.recipe import (
    Recipe,
    RecipeSource,
    date_mask_specs,
    discover_bands,
    mask_specs,
    recipe_from_config,
)
from eoforge.prepare.scene import PreparedScene
from eoforge.prepare.stats import BandStats, normalisation
from eoforge.prepare.timezarr import TimeZarr

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)

GDAL_CACHE_MB = 256

PALETTE = ["#e41a1c", "#ffff33", "#a6d854", "#984ea3", "#1b7837", "#377eb8", "#bf812d", "#f781bf", "#999999"]


def _colors(cfg: InputsConfig) -> list[str]:
    given = cfg.colors or {}
    return [given.get(cid, PALETTE[i % len(PALETTE)]) for i, cid in enumerate(cfg.classes)]


def open_prepare_source(cfg: InputsConfig, prep: PrepareConfig) -> tuple[Recipe, RecipeSource | DatedSource]:
    """The recipe of a run and the source applying it to the run's files (grid, masks, AOI); a time stack
    with all its dates (``min_valid_date`` is applied by :func:`prepare`)."""
    grid_override = grid_like(prep.grid.like) if prep.grid.like else None
    spec, _ = _open(cfg, prep, grid_override, 512, probe_dates=False)
    source = spec.open()
    return source.recipe, source


def prepare(
    cfg: InputsConfig,
    out_dir: str | Path,
    block: int = 512,
    prep: PrepareConfig | None = None,
    sparse: bool = False,
    folder: str = "prepared",
    compute: ComputeConfig | None = None,
) -> PreparedScene:
    """Apply the preparation recipe, rasterize labels and compute statistics; write ``out_dir/prepared``
    (``out_dir/folder``). With ``inputs.scenes``, each scene goes to ``prepared/<name>/`` (:func:`prepare_scenes`).

    ``sparse``: point/line vector labels are accepted as sparse labels (the run keeps chips holding any
    labelled pixel, ``chips.min_labelled: 0``); otherwise they are refused (see :func:`load_vector`).
    ``compute``: with ``compute.workers`` or ``compute.scheduler``, the windows are read (aligned, warped,
    masked) as Dask tasks (:mod:`eoforge.prepare.parallel`); the outputs are the same bytes.
    """
    from eoforge.compute import dask_client

    with dask_client(compute) as client:
        return prepare_on(cfg, Path(out_dir), block, prep, sparse, folder, client)


def prepare_on(
    cfg: InputsConfig,
    out_dir: Path,
    block: int = 512,
    prep: PrepareConfig | None = None,
    sparse: bool = False,
    folder: str = "prepared",
    client: Client | None = None,
) -> PreparedScene:
    """:func:`prepare` on a given Dask client (``None``: in this process, a reader thread ahead of the writer)."""
    prep = prep or PrepareConfig()
    if cfg.scenes is not None:
        return prepare_scenes(cfg, out_dir, block, prep, sparse, client)
    labels = cfg.label_source()
    mapper = ClassMapper(cfg.classes, labels.ignore_unknown)
    grid_override = grid_like(prep.grid.like) if prep.grid.like else None
    spec, temporal = _open(cfg, prep, grid_override, block)
    source = spec.open()
    recipe = source.recipe
    with source:
        grid = source.grid
        bands = source.band_names
        first = source.paths[0]
        vector = is_vector(labels.path)
        gdf, facts = load_vector(cfg, grid, mapper, sparse) if vector else (None, {"kind": "raster"})
        lab_src: Any = None
        lab_reader: Any = None
        if not vector:
            lab_src, lab_reader = label_reader(cfg, grid)
        n_cls = len(cfg.classes)
        stats = BandStats(source.count)
        n = 0
        counts = np.zeros(n_cls, dtype=np.int64)
        lost = np.zeros(n_cls, dtype=np.int64)
        bg = IGNORE_INDEX
        if labels.background is not None:  # validated against classes by the config
            bg = list(cfg.classes).index(labels.background)
        profile = {
            "driver": "GTiff",
            "width": grid.width,
            "height": grid.height,
            "crs": grid.crs,
            "transform": grid.transform,
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "compress": "zstd",
            # level 1: ~10x less CPU than GDAL's default 9 on float32 (benchmarks/prepare.py, PERFORMANCE.md)
            # for ~30 % larger files; this stack is an intermediate read once by chips
            "zstd_level": 1,
            "BIGTIFF": "IF_SAFER",  # stacks above 4 GiB are written as BigTIFF
        }
        try:
            # GDAL's block cache defaults to 5 % of RAM; cap it so memory stays bounded by the blocks
            with rasterio.Env(GDAL_CACHEMAX=cachemax(GDAL_CACHE_MB)), atomic_dir(out_dir / folder) as tmp:
                with (
                    rasterio.open(
                        tmp / "image.tif", "w", count=source.count, dtype="float32", nodata=np.nan, **profile
                    ) as dst_img,
                    rasterio.open(
                        tmp / "labels.tif", "w", count=1, dtype="uint8", nodata=IGNORE_INDEX, **profile
                    ) as dst_lab,
                    ExitStack() as stack,
                ):
                    dst_img.descriptions = tuple(bands)
                    tz = None
                    if isinstance(source, DatedSource):  # the xarray view of the time stack
                        tz = TimeZarr(tmp / "stack.zarr", grid, source.dates, source.per_date, block)
                    windows = block_windows(grid, block)
                    if client is not None:  # reads on the cluster, in window order (at most a few ahead)
                        reads = stack.enter_context(WindowReads(client, replace(spec, grid=grid), windows))
                        images = iter(reads)
                    else:
                        images = _prefetched(stack, source, windows)
                    for win, img in zip(windows, images, strict=True):
                        if tz is not None:
                            tz.write(img, win)
                        valid = valid_mask(img)
                        if gdf is not None:
                            lab = burn(gdf, grid, win, bg, labels.all_touched)
                        else:
                            raw = lab_reader.read(1, window=win)
                            ok = ~np.isnan(raw) if raw.dtype.kind == "f" else np.ones(raw.shape, bool)
                            for nd in (lab_reader.nodata, labels.nodata):
                                if nd is not None:
                                    ok &= raw != nd
                            lab = mapper.array(raw, ok)
                        gone = lab[~valid]
                        lost += np.bincount(gone[gone != IGNORE_INDEX], minlength=n_cls)[:n_cls]
                        lab[~valid] = IGNORE_INDEX
                        dst_img.write(img, window=win)
                        dst_lab.write(lab, 1, window=win)
                        # under 'all' a band may be NaN at a valid pixel; a whole valid block is passed as a view
                        flat = img.reshape(img.shape[0], -1)
                        stats.update(flat if valid.all() else flat[:, valid.ravel()])
                        n += int(valid.sum())
                        counts += np.bincount(lab[lab != IGNORE_INDEX], minlength=n_cls)[:n_cls]
                if tz is not None:
                    tz.close()
                mapper.check(labels.path)
                if n == 0:
                    raise InputError(
                        f"{first}: every pixel is nodata; check inputs.nodata, the masks and the AOI"
                    )
                if counts.sum() == 0:
                    raise InputError(
                        f"{labels.path}: no labelled pixel falls on valid image pixels; "
                        "check that labels and image cover the same area"
                    )
                empty = [b for b, k in zip(bands, stats.n, strict=True) if k == 0]
                if empty:
                    raise InputError(
                        f"{first}: channel(s) {', '.join(empty)} are nodata on every valid pixel; "
                        "check inputs.nodata or drop them"
                    )
                norm = normalisation(
                    stats, prep.normalize, [(str(tmp / "image.tif"), grid)], prep.clip, block
                )
                scene = PreparedScene(
                    root=out_dir / folder,
                    grid=grid,
                    bands=bands,
                    class_ids=list(cfg.classes),
                    class_names=list(cfg.classes.values()),
                    colors=_colors(cfg),
                    mean=[float(x) for x in norm.offset],
                    std=[float(x) for x in norm.scale],
                    class_counts=[int(x) for x in counts],
                    sources=_sources(cfg),
                    nodata=cfg.nodata,
                    nodata_rule=cfg.nodata_rule,
                    lost_to_nodata=[int(x) for x in lost],
                    band_descriptions=source.described_names,
                    recipe=recipe.to_json(),
                    normalization={"mode": norm.mode, "percentile_accuracy": norm.percentile_accuracy},
                    label_facts={
                        **facts,
                        "classes_without_pixels": [
                            n for n, k in zip(cfg.classes.values(), counts, strict=True) if not k
                        ],
                    },
                    band_stats=stats.to_json(),
                    band_gaps={b: 1 - int(k) / n for b, k in zip(bands, stats.n, strict=True) if k < n},
                    temporal=temporal,
                )
                _warn_lost(scene)
                _warn_gaps(scene)
                _warn_unlabelled(scene)
                (tmp / "scene.json").write_text(json.dumps(scene.to_json(), indent=2))
        finally:
            if lab_reader is not None and lab_reader is not lab_src:
                lab_reader.close()
            if lab_src is not None:
                lab_src.close()
    log.info(
        "prepared %dx%d px, %d channels, %d labelled px", grid.width, grid.height, len(bands), counts.sum()
    )
    return scene


def _sources(cfg: InputsConfig) -> list[Any]:
    """What predict reads again: the images (``DATE=PATH`` strings for dated files), or the cube file."""
    if cfg.cube is not None:
        return [cfg.cube.path]
    if isinstance(cfg.images, dict):
        return dated_strings(cfg.images)
    return list(cfg.images or [])


def _open(
    cfg: InputsConfig, prep: PrepareConfig, grid: Any, block: int, probe_dates: bool = True
) -> tuple[SourceSpec, dict[str, Any] | None]:
    """What opens the source prepare reads (a time stack: its dates after ``min_valid_date``) and the facts
    about dates."""
    aoi: dict[str, Any] = dict(masks=mask_specs(cfg), aoi=prep.aoi, aoi_crs=prep.aoi_crs)
    extras: dict[str, Any] = dict(grid=grid, masks=tuple(mask_specs(cfg)), aoi=prep.aoi, aoi_crs=prep.aoi_crs)
    date_masks = date_mask_specs(cfg)  # refuses a mask date that is not a date of the stack
    if cfg.dates is None and cfg.cube is None:
        recipe = recipe_from_config(cfg, prep, discover_bands(cfg))
        return SourceSpec(recipe, cfg.images or [], False, **extras), None
    extras["date_masks"] = tuple((d, tuple(m)) for d, m in date_masks.items())
    aoi["date_masks"] = date_masks
    images: Any = [cfg.cube.path] if cfg.cube is not None else cfg.images
    if cfg.cube is not None:
        from eoforge.temporal.cube import open_cube

        dates = [str(d) for d in open_cube(cfg.cube.path, cfg.cube.variables, cfg.cube.time).dates]
    else:
        dates = list(cfg.dates or [])
    recipe = recipe_from_config(cfg, prep, discover_bands(cfg), dates)
    facts: dict[str, Any] = {"dates": dates, "dropped_dates": {}, "interpolate": prep.interpolate}
    if prep.min_valid_date is not None and probe_dates:
        with DatedSource(replace(recipe, interpolate=None), images, grid=grid, **aoi) as probe:
            fractions = valid_fractions(probe, block)
        facts["valid_fraction"] = {d: round(f, 4) for d, f in fractions.items()}
        dropped = {d: round(f, 4) for d, f in fractions.items() if f < prep.min_valid_date}
        kept = [d for d in dates if d not in dropped]
        if not kept:
            raise InputError(
                f"prepare.min_valid_date {prep.min_valid_date}: every date is below it (valid fractions "
                f"{', '.join(f'{d} {f:.2f}' for d, f in fractions.items())}); lower it"
            )
        for d, f in dropped.items():
            log.info(
                "date %s dropped: %.1f%% valid < prepare.min_valid_date %.2f", d, 100 * f, prep.min_valid_date
            )
        facts["dropped_dates"] = dropped
        facts["dates"] = kept
        recipe = replace(recipe, dates=tuple(kept))
    if prep.interpolate:
        log.info("gaps are filled by %s interpolation along time (prepare.interpolate)", prep.interpolate)
    return SourceSpec(recipe, images, True, **extras), facts


def prepare_scenes(
    cfg: InputsConfig,
    out_dir: Path,
    block: int,
    prep: PrepareConfig,
    sparse: bool = False,
    client: Client | None = None,
) -> PreparedScene:
    """Prepare every scene of ``inputs.scenes`` into ``out_dir/prepared/<name>/`` with the same recipe and grid
    rule, then normalise them all alike: statistics pooled over the valid pixels of all scenes (exact for
    zscore/minmax, one histogram over every scene for percentile), as one scene's statistics cover the whole
    scene. ``prepared/scene.json`` describes the run: pooled statistics, class counts summed over the
    scenes, the first scene's grid, and the scene names."""
    with atomic_dir(out_dir / "prepared") as tmp:
        parts = [
            (name, prepare_on(sub, tmp, block, prep, sparse, folder=name, client=client))
            for name, sub in cfg.scene_inputs()
        ]
        first_name, first = parts[0]
        for name, p in parts[1:]:
            if p.bands != first.bands:
                raise InputError(
                    f"scene {name}: bands {p.bands} differ from scene {first_name}'s {first.bands}; give every "
                    "scene the same bands (inputs.bands / file names)"
                )
            if p.grid.crs != first.grid.crs:
                raise InputError(
                    f"scene {name}: CRS {p.grid.crs} differs from scene {first_name}'s {first.grid.crs}; set "
                    "prepare.grid.crs so that every scene is prepared on one CRS"
                )
        stats = BandStats(len(first.bands))
        for _, p in parts:
            stats.merge(BandStats.from_json(p.band_stats or {}))
        images = [(str(tmp / name / "image.tif"), p.grid) for name, p in parts]
        norm = normalisation(stats, prep.normalize, images, prep.clip, block)
        pooled: dict[str, Any] = {
            "mean": [float(x) for x in norm.offset],
            "std": [float(x) for x in norm.scale],
            "normalization": {
                "mode": norm.mode,
                "percentile_accuracy": norm.percentile_accuracy,
                "over": "valid pixels of all scenes",
            },
        }
        for name, p in parts:  # every scene carries the run's normalisation (its own stays in band_stats)
            (tmp / name / "scene.json").write_text(json.dumps(replace(p, **pooled).to_json(), indent=2))
        run = replace(
            first,
            root=out_dir / "prepared",
            class_counts=[int(x) for x in np.sum([p.class_counts for _, p in parts], axis=0)],
            lost_to_nodata=[
                int(x) for x in np.sum([p.lost_to_nodata or [0] * len(p.class_ids) for _, p in parts], axis=0)
            ],
            sources=[s for _, p in parts for s in p.sources],
            band_stats=stats.to_json(),
            scenes=[name for name, _ in parts],
            **pooled,
        )
        (tmp / "scene.json").write_text(json.dumps(run.to_json(), indent=2))
    log.info("prepared %d scenes: %s", len(parts), ", ".join(name for name, _ in parts))
    return run


def _prefetched(
    stack: ExitStack, source: RecipeSource | DatedSource, windows: list[Window]
) -> Iterator[np.ndarray]:
    """The windows of ``source`` in order, each read by one reader thread while the one before is burnt, counted
    and written (GDAL releases the GIL, so the warp overlaps the rest on a second core); 2 blocks in memory at
    most; the pool is shut down (waiting for its read) with ``stack``, before the source closes."""
    pool = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="eoforge-prepare-read"))
    pending = pool.submit(_read, source, windows[0])
    for i in range(len(windows)):
        img = pending.result()
        if i + 1 < len(windows):
            pending = pool.submit(_read, source, windows[i + 1])
        yield img


def _read(source: RecipeSource | DatedSource, win: Window) -> np.ndarray:
    """``source.read`` in the reader thread, under the same GDAL cache cap (rasterio's Env is per thread)."""
    with rasterio.Env(GDAL_CACHEMAX=cachemax(GDAL_CACHE_MB)):
        return source.read(win)


LOST_WARN_FRACTION = 0.05


def _warn_unlabelled(scene: PreparedScene) -> None:
    """Log a warning for classes listed in the config that have no labelled pixel (the report warns too)."""
    empty = [n for n, k in zip(scene.class_names, scene.class_counts, strict=True) if k == 0]
    if empty:
        log.warning(
            "class(es) %s: no labelled pixel on valid image pixels after rasterization; the model cannot learn "
            "them (add labels, or drop them from inputs.classes)",
            ", ".join(repr(n) for n in empty),
        )


def _warn_gaps(scene: PreparedScene) -> None:
    """Log a warning for each band missing at more than 5 % of the valid pixels (filled with its mean)."""
    for band, share in (scene.band_gaps or {}).items():
        if share > LOST_WARN_FRACTION:
            log.warning(
                "band %s: nodata at %.0f%% of the valid pixels, filled with its mean there (nodata_rule 'all'); "
                "use inputs.nodata_rule: any to map only where every band is valid",
                band,
                100 * share,
            )


def _warn_lost(scene: PreparedScene) -> None:
    """Log a warning for each class losing more than 5 % of its labelled pixels to image nodata."""
    for name, kept, lost in zip(
        scene.class_names, scene.class_counts, scene.lost_to_nodata or [], strict=True
    ):
        if lost and lost > LOST_WARN_FRACTION * (kept + lost):
            log.warning(
                "class %s: %d of %d labelled pixels (%.0f%%) fall on image nodata and are dropped; "
                "check inputs.nodata / inputs.nodata_rule",
                name,
                lost,
                kept + lost,
                100 * lost / (kept + lost),
            )
