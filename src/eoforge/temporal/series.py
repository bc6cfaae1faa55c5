"""Labelled pixel time series from a long-format CSV: one row per (sample, date), band values, a label.

The layout is the one of ``sits`` exports and of most field campaigns: ``sample_id, date, <band>..., label``
(coordinates may be present and are ignored). Series are aligned by position: the k-th date of every sample
(sorted by date) is time step k, so samples of different years share one model, as in ``sits``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from eoforge.errors import DataError, InputError

log = logging.getLogger(__name__)

ID_COLUMNS = ("sample_id", "id", "pixel_id", "point_id")
IGNORED_COLUMNS = ("longitude", "latitude", "lon", "lat", "x", "y", "start_date", "end_date", "cube")


@dataclass(frozen=True)
class PixelSeries:
    """``values[i, t, b]``: band ``b`` of date ``t`` of sample ``i`` (NaN = gap); ``labels`` are class indices."""

    ids: np.ndarray
    values: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    bands: tuple[str, ...]
    dates: np.ndarray
    locations: np.ndarray | None = None  # a group number per sample: samples at one coordinate pair share it

    @property
    def n_times(self) -> int:
        return int(self.values.shape[1])

    def channels(self, idx: np.ndarray | None = None) -> np.ndarray:
        """``(N, T*B)`` with channels date-major (``t * B + b``), the layout the temporal models read."""
        v = self.values if idx is None else self.values[idx]
        return v.reshape(len(v), -1)

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}


def read_series_csv(
    path: str | Path,
    label_column: str = "label",
    date_column: str = "date",
    id_column: str | None = None,
    bands: list[str] | None = None,
) -> PixelSeries:
    """Read a long-format CSV of labelled pixel series; ``bands`` default to the numeric columns left over."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: time-series CSV not found; give the path of a long-format CSV")
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}); check the file") from None
    cols = list(df.columns)
    id_col: str = id_column or next((c for c in ID_COLUMNS if c in cols), "")
    for role, col in (("label", label_column), ("date", date_column), ("id", id_col)):
        if col not in cols:
            raise InputError(
                f"{path}: no {role} column '{col or ' / '.join(ID_COLUMNS)}'; columns are {cols}; "
                f"name it with --{role}-column"
            )
    if bands is None:
        skip = {label_column, date_column, id_col, *IGNORED_COLUMNS}
        bands = [c for c in cols if c not in skip and pd.api.types.is_numeric_dtype(df[c])]
    missing = [b for b in bands if b not in cols]
    if missing or not bands:
        raise InputError(f"{path}: band columns {missing or '(none)'} not found; columns are {cols}")
    try:
        df[date_column] = pd.to_datetime(df[date_column])
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: column '{date_column}' holds values that are not dates ({exc})") from None
    df = df.sort_values([id_col, date_column], kind="stable")
    sizes = df.groupby(id_col, sort=True).size()
    if sizes.nunique() != 1:
        worst = sizes[sizes != sizes.mode().iloc[0]].index[:3].tolist()
        raise DataError(
            f"{path}: samples have different numbers of dates ({sorted(sizes.unique().tolist())}), e.g. ids "
            f"{worst}; give every sample the same dates (fill gaps with empty values)"
        )
    n_labels = df.groupby(id_col, sort=True)[label_column].nunique(dropna=False)
    if (n_labels > 1).any():
        raise DataError(
            f"{path}: samples {n_labels[n_labels > 1].index[:3].tolist()} have more than one label; one label "
            "per sample id"
        )
    if df[label_column].isna().any():
        raise DataError(
            f"{path}: {int(df[label_column].isna().sum())} rows have no label; drop or label them"
        )
    n, t = len(sizes), int(sizes.iloc[0])
    values = df[bands].to_numpy(dtype=np.float32).reshape(n, t, len(bands))
    first = df.groupby(id_col, sort=True)[label_column].first()
    classes = tuple(sorted(str(c) for c in first.unique()))
    labels = first.astype(str).map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
    dates = df[date_column].to_numpy("datetime64[D]").reshape(n, t)
    locations = None
    for xy in (["longitude", "latitude"], ["lon", "lat"], ["x", "y"]):
        if all(c in cols for c in xy):  # the same place in several years: one group for grouped splits
            places = df.groupby(id_col, sort=True)[xy].first()
            locations = places.groupby(xy, dropna=False).ngroup().to_numpy(np.int64)
            break
    log.info("%s: %d series x %d dates x %d bands, %d classes", path.name, n, t, len(bands), len(classes))
    return PixelSeries(first.index.to_numpy(), values, labels, classes, tuple(bands), dates, locations)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded, stratified train / test split (scikit-learn)."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_fraction < 1:
        raise InputError(f"test fraction {test_fraction} must be between 0 and 1 (e.g. 0.3)")
    idx = np.arange(len(labels))
    try:
        tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=labels)
    except ValueError as exc:
        raise InputError(f"cannot split {len(labels)} samples stratified by class ({exc})") from None
    return np.sort(tr), np.sort(te)


def location_split(
    labels: np.ndarray, locations: np.ndarray | None, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a seeded train / test split with every location whole on one side (the samples of one place
    in several years never straddle it), classes balanced as far as the groups allow: one fold of
    scikit-learn's ``StratifiedGroupKFold`` with ``round(1 / test_fraction)`` folds (0.3 -> 3 folds, ~33 %)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if locations is None:
        raise InputError(
            "split by location needs coordinate columns (longitude/latitude, lon/lat or x/y) in the CSV; "
            "add them or split by sample"
        )
    if not 0 < test_fraction < 1:
        raise InputError(f"test fraction {test_fraction} must be between 0 and 1 (e.g. 0.3)")
    n_folds = max(2, round(1 / test_fraction))
    if len(np.unique(locations)) < n_folds:
        raise InputError(
            f"only {len(np.unique(locations))} locations for {n_folds} folds; split by sample or label more places"
        )
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    tr, te = next(folds.split(np.zeros(len(labels)), labels, locations))
    return np.sort(tr), np.sort(te)
