"""Listing and reading labelled chips for scene classification.

Three layouts are understood:

- **folder per class** (EuroSAT): ``ROOT/<class name>/<chip>.tif``, one label per chip;
- **CSV**: a ``path`` column (relative to the CSV) and a ``label`` column; several labels per chip are
  separated by ``;`` (multi-label);
- **BigEarthNet**: ``ROOT/<patch>/<patch>_<band>.tif`` single-band files at 10/20/60 m and
  ``<patch>_labels_metadata.json`` with the ``labels`` list (multi-label).

Chips are read with rasterio, every band resampled (bilinear) onto ``size x size`` pixels, as float32 with NaN
at nodata; a chip may be one multi-band file or several single-band files (stacked in ``bands`` order).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError

from eoforge.errors import DataError, InputError

log = logging.getLogger(__name__)

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2", ".png", ".vrt")


@dataclass(frozen=True)
class SceneSample:
    """One chip: its file(s) (one multi-band file, or single-band files in band order) and its labels."""

    files: tuple[Path, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class SceneSamples:
    samples: tuple[SceneSample, ...]
    classes: tuple[str, ...]
    multilabel: bool
    bands: tuple[str, ...] | None = None

    def targets(self) -> np.ndarray:
        """Class indices ``(N,)`` (single-label) or multi-hot ``(N, K)`` uint8 (multi-label)."""
        index = {c: i for i, c in enumerate(self.classes)}
        if not self.multilabel:
            return np.array([index[s.labels[0]] for s in self.samples], dtype=np.int64)
        out = np.zeros((len(self.samples), len(self.classes)), dtype=np.uint8)
        for i, s in enumerate(self.samples):
            out[i, [index[c] for c in s.labels]] = 1
        return out


def _finish(
    samples: list[SceneSample], where: Path, multilabel: bool, bands: tuple[str, ...] | None = None
) -> SceneSamples:
    if not samples:
        raise InputError(
            f"{where}: no labelled chips found; see the folder-per-class, CSV or BigEarthNet layouts"
        )
    classes = tuple(sorted({c for s in samples for c in s.labels}))
    log.info(
        "%s: %d chips, %d classes (%s)",
        where,
        len(samples),
        len(classes),
        "multi-label" if multilabel else "single-label",
    )
    return SceneSamples(tuple(samples), classes, multilabel, bands)


def list_folder_per_class(root: str | Path) -> SceneSamples:
    """EuroSAT layout: one sub-folder per class holding its chips."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder; give a folder with one sub-folder of chips per class")
    samples = [
        SceneSample((f,), (d.name,))
        for d in sorted(p for p in root.iterdir() if p.is_dir())
        for f in sorted(d.iterdir())
        if f.suffix.lower() in RASTER_SUFFIXES
    ]
    return _finish(samples, root, multilabel=False)


def list_csv(
    path: str | Path, path_column: str = "path", label_column: str = "label", sep: str = ";"
) -> SceneSamples:
    """A CSV with a chip path per row (relative to the CSV) and its label(s), ``sep``-separated if several."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: chip list CSV not found")
    df = pd.read_csv(path, dtype=str)
    for col in (path_column, label_column):
        if col not in df.columns:
            raise InputError(f"{path}: no column '{col}'; columns are {list(df.columns)}")
    samples = []
    for i, row in df.iterrows():
        if pd.isna(row[label_column]) or pd.isna(row[path_column]):
            raise DataError(f"{path}: row {i} has no path or no label; fill or drop it")
        f = Path(row[path_column])
        f = f if f.is_absolute() else path.parent / f
        if not f.is_file():
            raise InputError(f"{path}: row {i}: chip {f} not found; paths are relative to the CSV")
        labels = tuple(x.strip() for x in str(row[label_column]).split(sep) if x.strip())
        samples.append(SceneSample((f,), labels))
    multilabel = (
        any(len(s.labels) != 1 for s in samples) or df[label_column].str.contains(sep, regex=False).any()
    )
    return _finish(samples, path, multilabel=bool(multilabel))


BIGEARTHNET_S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")


def list_bigearthnet(root: str | Path, bands: tuple[str, ...] = BIGEARTHNET_S2_BANDS) -> SceneSamples:
    """BigEarthNet patches: one folder per patch with single-band files and ``*_labels_metadata.json``."""
    root = Path(root)
    metas = sorted(root.glob("*/*_labels_metadata.json"))
    samples = []
    for meta in metas:
        patch = meta.parent
        files = tuple(patch / f"{patch.name}_{b}.tif" for b in bands)
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{patch}: band files {missing} missing; choose the bands the patches have")
        try:
            labels = tuple(json.loads(meta.read_text())["labels"])
        except (json.JSONDecodeError, KeyError) as exc:
            raise DataError(f"{meta}: no 'labels' list ({exc}); not a BigEarthNet metadata file") from None
        samples.append(SceneSample(files, labels))
    return _finish(samples, root, multilabel=True, bands=bands)


def list_samples(source: str | Path) -> SceneSamples:
    """Guess the layout: a ``.csv`` file, BigEarthNet patch folders, or folders per class."""
    source = Path(source)
    if source.suffix.lower() == ".csv":
        return list_csv(source)
    if not source.is_dir():
        raise InputError(f"{source}: not a CSV nor a folder of chips")
    if any(source.glob("*/*_labels_metadata.json")):
        return list_bigearthnet(source)
    return list_folder_per_class(source)


def read_chip(sample: SceneSample, size: int) -> np.ndarray:
    """``(C, size, size)`` float32, every band resampled (bilinear) onto the chip size, NaN at nodata."""
    out = []
    for f in sample.files:
        try:
            with rasterio.open(f) as src:
                data = src.read(
                    out_shape=(src.count, size, size), resampling=Resampling.bilinear, masked=True
                )
        except RasterioIOError as exc:
            raise DataError(f"{f}: unreadable chip ({exc}); check the file") from None
        out.append(np.ma.filled(data.astype(np.float32), np.nan))
    return np.concatenate(out, axis=0)
