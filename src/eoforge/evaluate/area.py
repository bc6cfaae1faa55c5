"""Good-practice area estimation from a map and a stratified reference sample (Olofsson et al. 2014).

The map classes are the strata: ``W_i`` is the share of the map in class ``i`` and ``n_ij`` counts the sample
units of stratum ``i`` whose reference class is ``j``. The estimated cell proportions are
``p_ij = W_i n_ij / n_i`` (Olofsson et al. 2014, Remote Sensing of Environment 148: 42–57, eq. 4), from which:

- error-adjusted area of class ``j``: ``A_j = A_tot * sum_i p_ij`` with standard error
  ``A_tot * sqrt(sum_i W_i^2 (n_ij/n_i)(1 - n_ij/n_i) / (n_i - 1))`` (eq. 10) and a 95 % interval of ±1.96 SE;
- user's accuracy ``n_ii / n_i`` with variance ``UA (1 - UA) / (n_i - 1)`` (eq. 6);
- producer's accuracy ``p_jj / p_.j`` with the variance of eq. 7 (Olofsson et al. 2013);
- overall accuracy ``sum_j p_jj`` with variance ``sum_i W_i^2 UA_i (1 - UA_i) / (n_i - 1)`` (eq. 5).

These few closed-form estimators are written out here because no maintained Python package implements them
for a stratified design (the R packages `mapaccuracy` and `sits` do); each line cites its equation.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eoforge.errors import InputError
from eoforge.io.atomic import write_text

log = logging.getLogger(__name__)

Z95 = 1.959963984540054  # two-sided 95 % quantile of the standard normal


@dataclass(frozen=True)
class ClassArea:
    """Estimates for one class (``None`` where the sample cannot support the estimate, e.g. ``n_i = 1``)."""

    id: int
    name: str
    map_pixels: int
    sample_count: int
    area_pixels: float
    area_pixels_se: float | None
    area_ha: float | None
    area_ci95_ha: float | None
    mapped_area_ha: float | None
    users_accuracy: float | None
    users_accuracy_se: float | None
    producers_accuracy: float | None
    producers_accuracy_se: float | None

    @property
    def area_ci95_pixels(self) -> float | None:
        return None if self.area_pixels_se is None else Z95 * self.area_pixels_se


@dataclass(frozen=True)
class AreaEstimate:
    """The stratified estimates for every class, plus overall accuracy and the error matrix of proportions."""

    classes: list[ClassArea]
    overall_accuracy: float
    overall_accuracy_se: float | None
    pixel_area_ha: float | None
    sample_counts: list[list[int]]
    proportions: list[list[float]]

    def to_json(self) -> dict[str, Any]:
        """The ``area.json`` layout (NaN-free: unsupported estimates are ``null``)."""
        return {
            "method": "stratified estimator, Olofsson et al. 2014 (RSE 148:42-57); strata = map classes",
            "pixel_area_ha": self.pixel_area_ha,
            "overall_accuracy": self.overall_accuracy,
            "overall_accuracy_se": self.overall_accuracy_se,
            "classes": {
                c.name: {
                    "id": c.id,
                    "map_pixels": c.map_pixels,
                    "sample_count": c.sample_count,
                    "mapped_area_ha": c.mapped_area_ha,
                    "area_pixels": c.area_pixels,
                    "area_ci95_pixels": c.area_ci95_pixels,
                    "area_ha": c.area_ha,
                    "area_ci95_ha": c.area_ci95_ha,
                    "users_accuracy": c.users_accuracy,
                    "users_accuracy_se": c.users_accuracy_se,
                    "producers_accuracy": c.producers_accuracy,
                    "producers_accuracy_se": c.producers_accuracy_se,
                }
                for c in self.classes
            },
            "sample_counts": {
                "rows": "map class",
                "columns": "reference class",
                "order": [c.name for c in self.classes],
                "counts": self.sample_counts,
            },
            "error_matrix_proportions": self.proportions,
        }


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def estimate_area(
    map_pixels: Sequence[int],
    counts: np.ndarray,
    names: Sequence[str] | None = None,
    ids: Sequence[int] | None = None,
    pixel_area_ha: float | None = None,
) -> AreaEstimate:
    """Stratified area, accuracy and their standard errors.

    ``map_pixels[i]`` is the number of map pixels of class ``i`` (the stratum size); ``counts[i, j]`` the
    number of sample units mapped as ``i`` whose reference class is ``j``. Classes with map pixels must have
    at least one sample unit; a class may have zero map pixels (it is then only a reference class).
    ``pixel_area_ha`` converts pixel counts to hectares (``None`` leaves the hectare fields ``None``).
    """
    n_ij = np.asarray(counts, dtype=np.float64)
    npx = np.asarray(map_pixels, dtype=np.float64)
    k = len(npx)
    if n_ij.shape != (k, k):
        raise InputError(
            f"sample counts have shape {n_ij.shape} but there are {k} classes; give a {k}x{k} matrix"
        )
    ids = list(ids) if ids is not None else list(range(k))
    names = list(names) if names is not None else [str(i) for i in ids]
    total = npx.sum()
    if total <= 0:
        raise InputError("the map has no classified pixel; check the map's nodata value")
    n_i = n_ij.sum(axis=1)
    empty = [names[i] for i in range(k) if npx[i] > 0 and n_i[i] == 0]
    if empty:
        raise InputError(
            f"map classes {', '.join(empty)} have mapped pixels but no sample unit; every stratum needs "
            "reference samples (use `eoforge sample-design --min-per-class`)"
        )
    w = npx / total
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(n_i[:, None] > 0, n_ij / n_i[:, None], 0.0)  # n_ij / n_i
        p = w[:, None] * share  # eq. 4
        # 1 / (n_i - 1); a stratum sampled entirely (n_i >= N_i, e.g. a class of 3 pixels with 3 points) has
        # no sampling variance; one unit in a larger stratum leaves the variance undefined (NaN)
        census = (n_i >= npx) & (npx > 0)
        dof = np.where(census, np.inf, np.where(n_i > 1, n_i - 1, np.nan))
        ua = np.diag(share).copy()
        ua[n_i == 0] = np.nan
        ua_var = ua * (1 - ua) / dof  # eq. 6
        p_col = p.sum(axis=0)
        pa = np.where(p_col > 0, np.diag(p) / p_col, np.nan)
        # eq. 5: var(OA) = sum_i W_i^2 UA_i (1 - UA_i) / (n_i - 1), over sampled strata
        sampled = n_i > 0
        oa = float(np.trace(p))
        oa_var = float(np.sum((w**2 * ua * (1 - ua) / dof)[sampled]))
        # eq. 10: var(p_.j) = sum_i W_i^2 share_ij (1 - share_ij) / (n_i - 1)
        term = (w**2)[:, None] * share * (1 - share) / dof[:, None]
        term[~sampled] = 0.0
        p_col_var = term.sum(axis=0)
        # eq. 7, in estimated pixel totals: N_j = map pixels of stratum j, Nhat_.j = sum_i N_i n_ij / n_i
        n_hat = (npx[:, None] * share).sum(axis=0)
    classes: list[ClassArea] = []
    for j in range(k):
        pa_var = math.nan
        if n_hat[j] > 0 and math.isfinite(pa[j]):
            others = sum(
                npx[i] ** 2 * share[i, j] * (1 - share[i, j]) / dof[i]
                for i in range(k)
                if i != j and sampled[i]
            )
            own = npx[j] ** 2 * (1 - pa[j]) ** 2 * ua[j] * (1 - ua[j]) / dof[j] if sampled[j] else 0.0
            pa_var = (own + pa[j] ** 2 * others) / n_hat[j] ** 2
        se_px = math.sqrt(p_col_var[j]) * total if math.isfinite(p_col_var[j]) else math.nan
        classes.append(
            ClassArea(
                id=int(ids[j]),
                name=str(names[j]),
                map_pixels=int(npx[j]),
                sample_count=int(n_i[j]),
                area_pixels=float(p_col[j] * total),
                area_pixels_se=_finite(se_px),
                area_ha=None if pixel_area_ha is None else float(p_col[j] * total * pixel_area_ha),
                area_ci95_ha=None if pixel_area_ha is None else _finite(Z95 * se_px * pixel_area_ha),
                mapped_area_ha=None if pixel_area_ha is None else float(npx[j] * pixel_area_ha),
                users_accuracy=_finite(ua[j]),
                users_accuracy_se=_finite(math.sqrt(ua_var[j])) if math.isfinite(ua_var[j]) else None,
                producers_accuracy=_finite(pa[j]),
                producers_accuracy_se=_finite(math.sqrt(pa_var)) if math.isfinite(pa_var) else None,
            )
        )
    single = [names[i] for i in range(k) if n_i[i] == 1 and not census[i]]
    if single:
        log.warning("classes %s have one sample unit: their standard errors are undefined", ", ".join(single))
    return AreaEstimate(
        classes=classes,
        overall_accuracy=oa,
        overall_accuracy_se=_finite(math.sqrt(oa_var)) if math.isfinite(oa_var) else None,
        pixel_area_ha=pixel_area_ha,
        sample_counts=n_ij.astype(np.int64).tolist(),
        proportions=p.tolist(),
    )


def area_estimate(
    map_path: str | Path,
    reference: str | Path,
    column: str,
    out_dir: str | Path | None = None,
    classes: Sequence[str] | None = None,
    block: int = 1024,
) -> AreaEstimate:
    """Area estimate from a class map and reference points (a stratified sample by map class).

    ``eoforge area MAP.tif --reference points.gpkg --column C -o DIR``: counts the map's pixels per class
    (the strata), reads the map class under every labelled point, and writes ``DIR/area.json``. Reference
    values are class ids or names (``classes``: ``["ID=NAME", ...]``); unlabelled points are skipped.
    """
    from eoforge.evaluate.reference import ClassTable, PointReference, open_reference
    from eoforge.evaluate.sampling import count_classes, map_blocks, open_map

    table = ClassTable.parse(classes)
    strata = count_classes(map_path, block)
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    with open_map(map_path) as src, open_reference(reference, strata.grid, column, table) as ref:
        if not isinstance(ref, PointReference):
            raise InputError(
                f"{reference}: area estimation needs reference points (a sample), not {ref.kind}; "
                "draw them with `eoforge sample-design`"
            )
        for win, values, valid in map_blocks(src, block):
            pairs.append(ref.pairs(win, values, valid))
    mapped = np.concatenate([p[0] for p in pairs])
    truth = np.concatenate([p[1] for p in pairs])
    if len(mapped) == 0:
        raise InputError(
            f"{reference}: no labelled point falls on a classified map pixel; check column '{column}'"
        )
    ids = list(table.ids) + sorted((set(strata.ids) | set(truth.tolist())) - set(table.ids))
    pos = {c: i for i, c in enumerate(ids)}
    counts = np.zeros((len(ids), len(ids)), dtype=np.int64)
    np.add.at(counts, ([pos[v] for v in mapped.tolist()], [pos[v] for v in truth.tolist()]), 1)
    px = dict(zip(strata.ids, strata.pixels, strict=True))
    log.info("%s: %d labelled points on the map", reference, len(mapped))
    est = estimate_area(
        [px.get(c, 0) for c in ids], counts, [table.name(c) for c in ids], ids, strata.pixel_area_ha
    )
    if out_dir is not None:
        doc = est.to_json()
        doc.update(
            {"map": str(map_path), "reference": str(reference), "column": column, "points": len(mapped)}
        )
        write_text(Path(out_dir) / "area.json", json.dumps(doc, indent=2))
    return est
