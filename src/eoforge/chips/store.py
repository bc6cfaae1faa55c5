"""The chip store on disk and what reads it: ``OUT/chips/`` holds

- ``chips.zarr``: ``image`` (chip, band, y, x) float32, NaN at nodata; ``label`` (chip, y, x) uint8 class
  indices (255 = unlabelled); per-chip ``row``, ``col``, ``split`` (0 train, 1 val, 2 test), ``transform``
  (chip, affine) and pixel-centre coordinates ``chip_x`` (chip, x), ``chip_y`` (chip, y); a ``spatial_ref``
  variable with the CRS (CF grid mapping). Dimension names are stored, so ``xarray.open_zarr`` opens it.
  ``CHUNK`` chips per chunk (one file each; fewer for large chips, :func:`chips_per_chunk`).
- ``index.parquet``: GeoParquet, one row per chip: footprint, ``chip, split, row, col, block_row, block_col,
  scene`` (the scene's name; with one scene its prepared image, relative to ``OUT``) and ``px_<class>``
  labelled pixels per class.
- ``chips.json``: sizes, sampler, split mode, counts, chip indices per split.
- ``points.parquet`` (with ``chips.points``): a stratified pixel sample per split and class, band values.
"""

from __future__ import annotations

import itertools
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import rasterio
import zarr
from zarr.codecs import BloscCodec

from eoforge.chips.splits import SPLITS
from eoforge.config import IGNORE_INDEX
from eoforge.errors import InputError
from eoforge.geo import Grid
from eoforge.io.atomic import atomic_dir

CHUNK = 64
"""Chips per Zarr chunk of ``image`` and ``label``: a chunk is encoded and written with one call (one Blosc
encode, one file), which costs ~2.4x less CPU than one-chip chunks in Zarr v3 shards of as many chips
(zarr-python's per-chunk pipeline cost dominated those). Extraction tasks cover whole chunks, so no two tasks
write one file. Readers take whole chunks (:func:`chunk_runs`) rather than one chip at a time."""
CHUNK_BYTES = 8 * 2**20
"""Float32 image bytes per chunk at most: large chips (many bands, 256 px and up) get fewer chips per chunk, so
a reader of one chip decodes at most this much and Blosc's 2 GiB buffer limit is never near."""


def chips_per_chunk(bands: int, size: int) -> int:
    """Chips per ``image``/``label`` chunk: :data:`CHUNK`, fewer when that would exceed :data:`CHUNK_BYTES`."""
    return max(1, min(CHUNK, CHUNK_BYTES // max(1, bands * size * size * 4)))


COMPRESSOR = BloscCodec(cname="blosclz", clevel=1, shuffle="shuffle", blocksize=2**18)
"""Chip chunks: Blosc's own codec at level 1 with byte shuffle, 256 KiB blocks. After the shuffle each byte
of the float32 values is a stream of its own; blosclz at level 1 gives up quickly on streams that do not
compress (the noisy low mantissa bytes) and compresses the rest. Measured per 64-chip chunk (6 bands, 64 px):
on noise 1.4 ms encode for 0.75 of the bytes vs 4.5 ms for 0.63 with LZ4 level 5 (the earlier codec); on
smooth reflectances with noise, and on 8-bit Landsat, about as fast as LZ4 for 0.51 vs 0.52 and 0.27 vs 0.21
(docs/PERFORMANCE.md, Chips, fourth round). Decoding is as fast or faster."""


@dataclass(frozen=True)
class ChipStore:
    """A written chip store: where it is and which chip indices belong to each split."""

    root: Path
    size: int
    splits: dict[str, list[int]]

    @property
    def zarr_path(self) -> Path:
        return self.root / "chips.zarr"

    @property
    def index_path(self) -> Path:
        return self.root / "index.parquet"

    @property
    def points_path(self) -> Path:
        return self.root / "points.parquet"

    def arrays(self) -> tuple[zarr.Array, zarr.Array]:
        g = zarr.open_group(str(self.zarr_path), mode="r")
        return g["image"], g["label"]  # type: ignore[return-value]

    def index(self) -> gpd.GeoDataFrame:
        return gpd.read_parquet(self.index_path)

    def meta(self) -> dict[str, Any]:
        return dict(json.loads((self.root / "chips.json").read_text()))

    def points(self) -> gpd.GeoDataFrame:
        if not self.points_path.is_file():
            raise InputError(
                f"{self.points_path}: no point sample; set chips.points.per_class and re-run chips"
            )
        return gpd.read_parquet(self.points_path)

    @classmethod
    def load(cls, root: str | Path) -> ChipStore:
        root = Path(root)
        meta = root / "chips.json"
        if not meta.is_file():
            raise InputError(f"{meta}: not found; run `eoforge chips` first")
        m = json.loads(meta.read_text())
        return cls(root=root, size=m["size"], splits={k: list(v) for k, v in m["splits"].items()})


TIME_ATTRS = {"units": "days since 1970-01-01", "calendar": "proleptic_gregorian", "standard_name": "time"}


def _channel_dates(bands: list[str]) -> np.ndarray | None:
    """Days since 1970 of each channel of a time stack (names ``DATE/channel``), None for undated bands."""
    import datetime as dt

    try:
        days = [dt.date.fromisoformat(b.split("/", 1)[0]).toordinal() for b in bands if "/" in b]
    except ValueError:
        return None
    if len(days) != len(bands) or not days:
        return None
    return np.asarray(days, dtype=np.int64) - dt.date(1970, 1, 1).toordinal()


def create_chip_arrays(
    path: Path, grids: list[Grid], bands: list[str], size: int, n: int, attrs: dict[str, Any]
) -> None:
    """Create the Zarr group with ``spatial_ref`` and the empty ``image``/``label`` arrays of ``n`` chips (the
    extraction tasks fill them); :func:`write_coords` adds the per-chip coordinates, before or meanwhile."""
    c = len(bands)
    grid = grids[0]
    chunk = min(chips_per_chunk(c, size), max(n, 1))
    g = zarr.open_group(str(path), mode="w", attributes=attrs)  # attributes given at creation: one write
    g.create_array(
        "spatial_ref",
        shape=(),
        dtype="int32",
        fill_value=0,
        attributes={"crs_wkt": rasterio.crs.CRS.from_user_input(grid.crs).to_wkt(), "spatial_ref": grid.crs},
    )
    g.create_array(
        "image",
        shape=(n, c, size, size),
        chunks=(chunk, c, size, size),
        compressors=COMPRESSOR,
        dtype="float32",
        fill_value=np.nan,
        dimension_names=["chip", "band", "y", "x"],
        attributes={
            "grid_mapping": "spatial_ref",
            "long_name": "image bands",
            "band_names": bands,
            "coordinates": "row col split chip_x chip_y"
            + (" time" if _channel_dates(bands) is not None else ""),
        },
    )
    g.create_array(
        "label",
        shape=(n, size, size),
        chunks=(chunk, size, size),
        compressors=COMPRESSOR,
        dtype="uint8",
        fill_value=IGNORE_INDEX,
        dimension_names=["chip", "y", "x"],
        attributes={
            "grid_mapping": "spatial_ref",
            "long_name": "class index",
            "flag_values": list(range(len(attrs["classes"]))),
            "flag_meanings": " ".join(n.replace(" ", "_") for n in attrs["classes"].values()),
            "coordinates": "row col split chip_x chip_y",
        },
    )


def write_coords(
    path: Path,
    grids: list[Grid],
    bands: list[str],
    size: int,
    rows: np.ndarray,
    cols: np.ndarray,
    codes: np.ndarray,
    scene: np.ndarray | None = None,
) -> None:
    """Write the per-chip variables (``chip, band, row, col, split, transform, chip_x, chip_y``, ``time`` for
    a time stack, ``scene`` with several scenes) into the group :func:`create_chip_arrays` made. ``grids``: the
    scenes' grids (one CRS); ``scene``: each chip's index into them (names in the group attribute ``scenes``),
    or None for one scene."""
    n, c = len(rows), len(bands)
    sid = np.zeros(n, dtype=np.int64) if scene is None else scene
    g = zarr.open_group(str(path), mode="r+")
    t = np.array([list(g.transform)[:6] for g in grids], dtype=np.float64)[sid].T  # a, b, c, d, e, f per chip
    dated = _channel_dates(bands)
    per_chip: dict[str, tuple[np.ndarray, list[str], dict[str, Any]]] = {
        "chip": (np.arange(n, dtype=np.int64), ["chip"], {}),
        "band": (np.arange(1, c + 1, dtype=np.int64), ["band"], {"band_names": bands}),
        "row": (rows.astype(np.int64), ["chip"], {"long_name": "scene row of the chip's top-left pixel"}),
        "col": (cols.astype(np.int64), ["chip"], {"long_name": "scene column of the chip's top-left pixel"}),
        "split": (
            codes.astype(np.int8),
            ["chip"],
            {"flag_values": [0, 1, 2], "flag_meanings": " ".join(SPLITS)},
        ),
        "transform": (
            np.stack(
                [t[0], t[1], t[2] + cols * t[0] + rows * t[1], t[3], t[4], t[5] + cols * t[3] + rows * t[4]],
                axis=1,
            )
            if n
            else np.zeros((0, 6)),
            ["chip", "affine"],
            {"long_name": "GDAL-order affine (a, b, c, d, e, f) of each chip"},
        ),
        "chip_x": (
            t[2][:, None] + (cols[:, None] + np.arange(size)[None, :] + 0.5) * t[0][:, None],
            ["chip", "x"],
            {"standard_name": "projection_x_coordinate", "long_name": "pixel-centre x"},
        ),
        "chip_y": (
            t[5][:, None] + (rows[:, None] + np.arange(size)[None, :] + 0.5) * t[4][:, None],
            ["chip", "y"],
            {"standard_name": "projection_y_coordinate", "long_name": "pixel-centre y"},
        ),
    }
    if dated is not None:  # a time stack: channels date-major, each channel's date as a decoded coordinate
        per_chip["time"] = (dated, ["band"], dict(TIME_ATTRS))
    if scene is not None:
        per_chip["scene"] = (
            sid,
            ["chip"],
            {"long_name": "index of the chip's scene in the attribute scenes"},
        )
    for name, (data, dims, a) in per_chip.items():
        chunks: tuple[int, ...] | Literal["auto"] = (
            (min(4096, max(len(data), 1)), *(int(d) for d in data.shape[1:])) if data.ndim else "auto"
        )
        arr = g.create_array(
            name, shape=data.shape, dtype=data.dtype, chunks=chunks, dimension_names=dims, attributes=a
        )
        if data.size:
            arr[...] = data


def consolidate(path: Path) -> None:
    with warnings.catch_warnings():  # consolidated metadata is a zarr-python extension of the v3 spec
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


def chunk_runs(chips: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """``[a, b)`` positions of runs of sorted ``chips`` that fall in one Zarr chunk of ``chunk`` chips."""
    if len(chips) == 0:
        return []
    cut = np.flatnonzero(np.diff(np.asarray(chips) // chunk)) + 1
    edges = [0, *cut.tolist(), len(chips)]
    return list(itertools.pairwise(edges))


def iter_chips(
    images: zarr.Array, labels: zarr.Array, chips: Sequence[int]
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(chip, image, label)`` for each of ``chips`` in ascending order, each Zarr chunk they touch read once
    (the slice from its first to its last wanted chip): memory stays one chunk, and a chip costs a share of its
    chunk's decode instead of a whole one."""
    u = np.unique(np.asarray(chips, dtype=np.int64))
    for a, b in chunk_runs(u, int(images.chunks[0])):
        lo, hi = int(u[a]), int(u[b - 1]) + 1
        img, lab = np.asarray(images[lo:hi]), np.asarray(labels[lo:hi])
        for j in u[a:b].tolist():
            yield j, img[j - lo], lab[j - lo]


def info(store: ChipStore) -> dict[str, dict[str, int]]:
    """Chips and labelled pixels per class, per split: ``{split: {"chips": n, "<class>": pixels, ...}}``."""
    idx = store.index()
    px = [c for c in idx.columns if c.startswith("px_")]
    out: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        sub = idx[idx["split"] == s]
        out[s] = {"chips": len(sub), **{c[3:]: int(sub[c].sum()) for c in px}}
    return out


def export_tif(store: ChipStore, out_dir: str | Path) -> int:
    """Write each chip as georeferenced GeoTIFFs for QGIS, ``DIR/<split>/chip_NNNNNN_image.tif`` (float32,
    NaN nodata, band names) and ``…_label.tif`` (uint8 class indices, 255 nodata), plus the footprints as
    ``DIR/footprints.gpkg``. Returns the number of chips written."""
    idx = store.index()
    images, labels = store.arrays()
    g = zarr.open_group(str(store.zarr_path), mode="r")
    crs = idx.crs
    transforms = np.asarray(g["transform"][...])  # type: ignore[index]
    bands = [str(b) for b in g["image"].attrs.get("band_names", [])]  # type: ignore[union-attr]
    with atomic_dir(out_dir) as tmp:
        for s in SPLITS:
            (tmp / s).mkdir()
        split_of = dict(zip(idx["chip"].tolist(), idx["split"].tolist(), strict=True))
        for chip, img, lab in iter_chips(images, labels, sorted(split_of)):
            t = rasterio.Affine(*transforms[chip])
            base = tmp / str(split_of[chip]) / f"chip_{chip:06d}"
            profile = {
                "driver": "GTiff",
                "width": store.size,
                "height": store.size,
                "crs": crs,
                "transform": t,
            }
            with rasterio.open(
                f"{base}_image.tif", "w", count=img.shape[0], dtype="float32", nodata=np.nan, **profile
            ) as dst:
                dst.write(img)
                if len(bands) == img.shape[0]:
                    dst.descriptions = tuple(bands)
            with rasterio.open(
                f"{base}_label.tif", "w", count=1, dtype="uint8", nodata=IGNORE_INDEX, **profile
            ) as dst:
                dst.write(lab, 1)
        idx.to_file(tmp / "footprints.gpkg", driver="GPKG")
    return len(idx)
