"""Stage 1, prepare: stack the input bands, rasterize the labels onto the image grid, compute band statistics.

Everything runs block by block, so memory is bounded by the block size, not the scene. Outputs, in
``OUT/prepared/``: ``image.tif`` (float32 stack, NaN where any band is nodata), ``labels.tif`` (uint8 class
indices, 255 = unlabelled) and ``scene.json`` (grid, bands, classes, normalisation statistics, class counts).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import rasterio
from affine import Affine
from rasterio import features
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window
from shapely.geometry import box

from eoforge.config import IGNORE_INDEX, InputsConfig, resolve_images
from eoforge.errors import DataError, InputError
from eoforge.geo import Grid
from eoforge.io.atomic import atomic_dir
from eoforge.io.rasters import RasterStack, block_windows, open_raster, valid_mask

log = logging.getLogger(__name__)

VECTOR_SUFFIXES = {".gpkg", ".shp", ".geojson", ".json", ".fgb", ".kml", ".gml", ".parquet", ".zip"}
RASTER_SUFFIXES = {".tif", ".tiff", ".vrt", ".img", ".jp2", ".nc", ".hdf", ".h5", ".png", ".asc"}
PALETTE = ["#e41a1c", "#ffff33", "#a6d854", "#984ea3", "#1b7837", "#377eb8", "#bf812d", "#f781bf", "#999999"]


@dataclass(frozen=True)
class PreparedScene:
    """What `prepare` wrote: paths and the scene metadata every later stage needs."""

    root: Path
    grid: Grid
    bands: list[str]
    class_ids: list[int]
    class_names: list[str]
    colors: list[str]
    mean: list[float]
    std: list[float]
    class_counts: list[int]
    sources: list[str]
    nodata: float | list[float | None] | None
    nodata_rule: str = "all"
    lost_to_nodata: list[int] | None = None
    band_descriptions: list[str] | None = None

    @property
    def image(self) -> Path:
        return self.root / "image.tif"

    @property
    def labels(self) -> Path:
        return self.root / "labels.tif"

    def to_json(self) -> dict[str, Any]:
        return {
            "grid": {
                "crs": self.grid.crs,
                "transform": list(self.grid.transform)[:6],
                "height": self.grid.height,
                "width": self.grid.width,
            },
            "bands": self.bands,
            "classes": [
                {"index": i, "id": cid, "name": n, "color": c, "pixels": k, "lost_to_nodata": lost}
                for i, (cid, n, c, k, lost) in enumerate(
                    zip(
                        self.class_ids,
                        self.class_names,
                        self.colors,
                        self.class_counts,
                        self.lost_to_nodata or [0] * len(self.class_ids),
                        strict=True,
                    )
                )
            ],
            "ignore_index": IGNORE_INDEX,
            "stats": {"mean": self.mean, "std": self.std},
            "sources": self.sources,
            "nodata": self.nodata,
            "nodata_rule": self.nodata_rule,
            "band_descriptions": self.band_descriptions,
        }

    @classmethod
    def load(cls, root: str | Path) -> PreparedScene:
        root = Path(root)
        meta_path = root / "scene.json"
        if not meta_path.is_file():
            raise InputError(f"{meta_path}: not found; run `eoforge prepare` first")
        m = json.loads(meta_path.read_text())
        g = m["grid"]
        return cls(
            root=root,
            grid=Grid(g["crs"], Affine(*g["transform"]), g["height"], g["width"]),
            bands=m["bands"],
            class_ids=[c["id"] for c in m["classes"]],
            class_names=[c["name"] for c in m["classes"]],
            colors=[c["color"] for c in m["classes"]],
            mean=m["stats"]["mean"],
            std=m["stats"]["std"],
            class_counts=[c["pixels"] for c in m["classes"]],
            sources=m["sources"],
            nodata=m["nodata"],
            nodata_rule=m.get("nodata_rule", "any"),  # scenes prepared before the rule existed used 'any'
            lost_to_nodata=[int(c.get("lost_to_nodata", 0)) for c in m["classes"]],
            band_descriptions=m.get("band_descriptions"),
        )


class _ClassMapper:
    """Maps raw label values (ids or names) to class indices, collecting values that are not classes."""

    def __init__(self, classes: dict[int, str], ignore_unknown: bool) -> None:
        self.ids = list(classes)
        self.index = {cid: i for i, cid in enumerate(self.ids)}
        self.by_name = {name.strip().lower(): i for i, name in enumerate(classes.values())}
        self.ignore_unknown = ignore_unknown
        self.unknown: set[str] = set()

    def value(self, v: Any) -> int:
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return IGNORE_INDEX
        if isinstance(v, str):
            key = v.strip().lower()
            if key in self.by_name:
                return self.by_name[key]
            try:
                v = float(key)
            except ValueError:
                self.unknown.add(repr(v))
                return IGNORE_INDEX
        fv = float(v)
        if fv.is_integer() and int(fv) in self.index:
            return self.index[int(fv)]
        self.unknown.add(str(int(fv)) if fv.is_integer() else str(fv))
        return IGNORE_INDEX

    def array(self, a: np.ndarray, valid: np.ndarray) -> np.ndarray:
        out = np.full(a.shape, IGNORE_INDEX, dtype=np.uint8)
        if valid.any():
            uniq, inv = np.unique(a[valid], return_inverse=True)
            lut = np.array([self.value(u.item()) for u in uniq], dtype=np.uint8)
            out[valid] = lut[inv]
        return out

    def check(self, path: Path) -> None:
        if self.unknown and not self.ignore_unknown:
            vals = ", ".join(sorted(self.unknown)[:20])
            # only suggest adding values that can be class ids (integers 0..65534)
            addable = all(_can_be_class_id(v) for v in self.unknown)
            one = sorted(self.unknown)[0]
            fix = (
                "add them to inputs.classes or set inputs.labels.ignore_unknown: true"
                if addable
                else f"set inputs.labels.nodata: {one} (if it marks unlabelled pixels) "
                "or inputs.labels.ignore_unknown: true"
            )
            raise InputError(f"{path}: label values not listed in classes: {vals}; {fix}")


def _can_be_class_id(v: str) -> bool:
    try:
        f = float(v)
    except ValueError:
        return False
    return f.is_integer() and 0 <= f <= 65534


def _colors(cfg: InputsConfig) -> list[str]:
    given = cfg.colors or {}
    return [given.get(cid, PALETTE[i % len(PALETTE)]) for i, cid in enumerate(cfg.classes)]


def _is_vector(path: Path) -> bool:
    """Known vector suffixes are vectors; for others, whatever OGR can open (e.g. a .csv with WKT) is one."""
    if path.suffix.lower() in VECTOR_SUFFIXES:
        return True
    if path.suffix.lower() in RASTER_SUFFIXES or not path.exists():
        return False
    try:
        pyogrio.read_info(path)
    except Exception:
        return False
    return True


def _load_vector(cfg: InputsConfig, grid: Grid, mapper: _ClassMapper) -> gpd.GeoDataFrame:
    lab = cfg.labels
    path = lab.path
    if not path.exists():
        raise InputError(f"{path}: label file not found; check inputs.labels.path")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable vector file ({str(exc).splitlines()[0]})") from None
    if lab.column is None and lab.value is None:
        cols = ", ".join(c for c in gdf.columns if c != "geometry")
        raise InputError(
            f"{path}: vector labels need inputs.labels.column (columns: {cols}) or inputs.labels.value (one class)"
        )
    if lab.column is not None and lab.column not in gdf.columns:
        cols = ", ".join(c for c in gdf.columns if c != "geometry")
        raise InputError(
            f"{path}: no column '{lab.column}' (columns: {cols}); set inputs.labels.column to one of them"
        )
    if gdf.crs is None:
        raise DataError(f"{path}: the vector file has no CRS; assign one (e.g. ogr2ogr -a_srs)")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty].to_crs(grid.crs)
    gdf = gdf[gdf.geometry.intersects(box(*grid.bounds))]
    if gdf.empty:
        raise InputError(
            f"{path}: no label geometry overlaps the image bounds {tuple(round(b, 2) for b in grid.bounds)} "
            f"({grid.crs}); check that labels and image cover the same area"
        )
    values = gdf[lab.column] if lab.column is not None else [lab.value] * len(gdf)
    gdf = gdf.assign(_cls=[mapper.value(v) for v in values])
    mapper.check(path)
    return gdf[gdf["_cls"] != IGNORE_INDEX]


def _label_reader(cfg: InputsConfig, grid: Grid) -> tuple[Any, Any]:
    """Open a raster label file on the image grid (reprojected with nearest neighbour when needed)."""
    path = cfg.labels.path
    src = open_raster(path)
    if src.crs is None:
        src.close()
        raise DataError(f"{path}: label raster has no CRS; assign one (e.g. gdal_edit.py -a_srs)")
    lb = transform_bounds(src.crs, grid.crs, *src.bounds)
    ib = grid.bounds
    if lb[0] >= ib[2] or lb[2] <= ib[0] or lb[1] >= ib[3] or lb[3] <= ib[1]:
        src.close()
        raise InputError(
            f"{path}: the label raster does not overlap the image; check that labels and image cover the same area"
        )
    same = src.crs.to_string() == grid.crs and Grid(grid.crs, src.transform, src.height, src.width).same_as(
        grid
    )
    if same:
        return src, src
    log.info("%s: reprojecting labels onto the image grid (nearest neighbour)", path)
    vrt = WarpedVRT(
        src,
        crs=grid.crs,
        transform=grid.transform,
        width=grid.width,
        height=grid.height,
        resampling=Resampling.nearest,
        nodata=src.nodata if src.nodata is not None else -1,
    )
    return src, vrt


def prepare(cfg: InputsConfig, out_dir: str | Path, block: int = 512) -> PreparedScene:
    """Stack bands, rasterize labels and compute statistics; write ``out_dir/prepared``."""
    out_dir = Path(out_dir)
    images = resolve_images(cfg.images)
    mapper = _ClassMapper(cfg.classes, cfg.labels.ignore_unknown)
    with RasterStack(images, nodata=cfg.nodata, nodata_rule=cfg.nodata_rule) as stack:
        grid = stack.grid
        if cfg.bands is not None and len(cfg.bands) != stack.count:
            raise InputError(
                f"{images[0]}: inputs.bands lists {len(cfg.bands)} names but the images hold {stack.count} bands; "
                "give one name per band"
            )
        bands = list(cfg.bands) if cfg.bands else stack.band_names
        vector = _is_vector(cfg.labels.path)
        gdf = _load_vector(cfg, grid, mapper) if vector else None
        lab_src: Any = None
        lab_reader: Any = None
        if not vector:
            lab_src, lab_reader = _label_reader(cfg, grid)
        n_cls = len(cfg.classes)
        s1 = np.zeros(stack.count)
        s2 = np.zeros(stack.count)
        nb = np.zeros(stack.count, dtype=np.int64)
        n = 0
        counts = np.zeros(n_cls, dtype=np.int64)
        lost = np.zeros(n_cls, dtype=np.int64)
        bg = IGNORE_INDEX
        if cfg.labels.background is not None:  # validated against classes by the config
            bg = list(cfg.classes).index(cfg.labels.background)
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
        }
        try:
            with atomic_dir(out_dir / "prepared") as tmp:
                with (
                    rasterio.open(
                        tmp / "image.tif", "w", count=stack.count, dtype="float32", nodata=np.nan, **profile
                    ) as dst_img,
                    rasterio.open(
                        tmp / "labels.tif", "w", count=1, dtype="uint8", nodata=IGNORE_INDEX, **profile
                    ) as dst_lab,
                ):
                    dst_img.descriptions = tuple(bands)
                    for win in block_windows(grid, block):
                        img = stack.read(win)
                        valid = valid_mask(img)
                        if gdf is not None:
                            lab = _burn(gdf, grid, win, bg, cfg.labels.all_touched)
                        else:
                            raw = lab_reader.read(1, window=win)
                            ok = ~np.isnan(raw) if raw.dtype.kind == "f" else np.ones(raw.shape, bool)
                            for nd in (lab_reader.nodata, cfg.labels.nodata):
                                if nd is not None:
                                    ok &= raw != nd
                            lab = mapper.array(raw, ok)
                        gone = lab[~valid]
                        lost += np.bincount(gone[gone != IGNORE_INDEX], minlength=n_cls)[:n_cls]
                        lab[~valid] = IGNORE_INDEX
                        dst_img.write(img, window=win)
                        dst_lab.write(lab, 1, window=win)
                        v = img[:, valid].astype(np.float64)
                        finite = ~np.isnan(v)  # under 'all' a band may be nodata at a valid pixel
                        v[~finite] = 0.0
                        s1 += v.sum(axis=1)
                        s2 += (v * v).sum(axis=1)
                        nb += finite.sum(axis=1)
                        n += v.shape[1]
                        counts += np.bincount(lab[lab != IGNORE_INDEX], minlength=n_cls)[:n_cls]
                mapper.check(cfg.labels.path)
                if n == 0:
                    raise InputError(f"{images[0]}: every pixel is nodata; check inputs.nodata and the files")
                if counts.sum() == 0:
                    raise InputError(
                        f"{cfg.labels.path}: no labelled pixel falls on valid image pixels; "
                        "check that labels and image cover the same area"
                    )
                empty = [b for b, k in zip(bands, nb, strict=True) if k == 0]
                if empty:
                    raise InputError(
                        f"{images[0]}: band(s) {', '.join(empty)} are nodata on every valid pixel; "
                        "check inputs.nodata or drop them"
                    )
                mean = s1 / nb
                std = np.sqrt(np.maximum(s2 / nb - mean**2, 0.0))
                std[std == 0] = 1.0
                scene = PreparedScene(
                    root=out_dir / "prepared",
                    grid=grid,
                    bands=bands,
                    class_ids=list(cfg.classes),
                    class_names=list(cfg.classes.values()),
                    colors=_colors(cfg),
                    mean=[float(x) for x in mean],
                    std=[float(x) for x in std],
                    class_counts=[int(x) for x in counts],
                    sources=[str(p) for p in images],
                    nodata=cfg.nodata,
                    nodata_rule=cfg.nodata_rule,
                    lost_to_nodata=[int(x) for x in lost],
                    band_descriptions=stack.described_names,
                )
                _warn_lost(scene)
                (tmp / "scene.json").write_text(json.dumps(scene.to_json(), indent=2))
        finally:
            if lab_reader is not None and lab_reader is not lab_src:
                lab_reader.close()
            if lab_src is not None:
                lab_src.close()
    log.info("prepared %dx%d px, %d bands, %d labelled px", grid.width, grid.height, len(bands), counts.sum())
    return scene


LOST_WARN_FRACTION = 0.05


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


def _burn(gdf: gpd.GeoDataFrame, grid: Grid, win: Window, fill: int, all_touched: bool) -> np.ndarray:
    shape = (int(win.height), int(win.width))
    hits = gdf.sindex.query(box(*grid.window_bounds(win)), predicate="intersects")
    if len(hits) == 0:
        return np.full(shape, fill, dtype=np.uint8)
    sub = gdf.iloc[np.sort(hits)]
    return features.rasterize(
        zip(sub.geometry, sub["_cls"], strict=True),
        out_shape=shape,
        transform=grid.window_transform(win),
        fill=fill,
        dtype="uint8",
        all_touched=all_touched,
    )
