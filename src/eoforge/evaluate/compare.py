"""Score any class map against any reference, streaming by blocks into a confusion matrix.

``eoforge evaluate --map MAP.tif --reference REF -o DIR``: the map is read block by block; the reference
(raster, polygons or points, any CRS, see :mod:`eoforge.evaluate.reference`) is put on the map's grid per
block; pairs of (reference class, map class) are counted. Map nodata and pixels outside the reference are
ignored. Classes are those listed (``--classes``) plus any other id seen in the map or the reference.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eoforge.errors import InputError
from eoforge.evaluate.curves import IGNORE, CurveAccumulator, averaged_metrics
from eoforge.evaluate.metrics import fmt, metrics_from_confusion
from eoforge.evaluate.reference import ClassTable, open_reference
from eoforge.evaluate.sampling import map_blocks, open_map
from eoforge.io.atomic import write_text
from eoforge.io.rasters import grid_of

log = logging.getLogger(__name__)

_SHIFT = np.int64(1 << 32)


def _count_pairs(ref: np.ndarray, mapped: np.ndarray) -> dict[int, int]:
    """Counts of ``ref * 2**32 + mapped`` codes; a bincount when the ids are small (~20x faster than a sort)."""
    top = int(max(ref.max(), mapped.max())) + 1
    if top <= 2048:
        n = np.bincount(ref * top + mapped, minlength=top * top)
        nz = np.flatnonzero(n)
        return {int(c // top) * int(_SHIFT) + int(c % top): int(n[c]) for c in nz}
    codes, n = np.unique(ref * _SHIFT + mapped, return_counts=True)
    return dict(zip(codes.tolist(), n.tolist(), strict=True))


@dataclass(frozen=True)
class Comparison:
    """Counts of reference class (rows) against map class (columns), with the class ids and names."""

    ids: list[int]
    names: list[str]
    confusion: np.ndarray
    reference_kind: str

    def metrics(self) -> dict[str, Any]:
        m = metrics_from_confusion(self.confusion, self.names, self.ids)
        m.update(averaged_metrics(self.confusion))
        return m


def compare_map(
    map_path: str | Path,
    reference: str | Path,
    column: str | None = None,
    classes: ClassTable | None = None,
    block: int = 1024,
) -> Comparison:
    """Confusion matrix of a class map against a reference (see the module doc)."""
    classes = classes or ClassTable()
    pairs: dict[int, int] = {}
    with open_map(map_path) as src:
        grid = grid_of(src)
        with open_reference(reference, grid, column, classes) as ref:
            for win, values, valid in map_blocks(src, block):
                m, r = ref.pairs(win, values, valid)
                if len(m) == 0:
                    continue
                for c, k in _count_pairs(r, m).items():
                    pairs[c] = pairs.get(c, 0) + k
            kind = ref.kind
    if not pairs:
        raise InputError(
            f"{reference}: no reference {'point' if kind == 'points' else 'pixel'} falls on a valid map pixel; "
            "check that map and reference cover the same area"
        )
    seen = {c // int(_SHIFT) for c in pairs} | {c % int(_SHIFT) for c in pairs}
    ids = list(classes.ids) + sorted(seen - set(classes.ids))
    pos = {cid: i for i, cid in enumerate(ids)}
    cm = np.zeros((len(ids), len(ids)), dtype=np.int64)
    for c, k in pairs.items():
        cm[pos[c // int(_SHIFT)], pos[c % int(_SHIFT)]] += k
    return Comparison(ids, [classes.name(i) for i in ids], cm, kind)


def render_map_report(metrics: dict[str, Any]) -> str:
    """A minimal self-contained HTML page of the map-vs-reference metrics (the full report is report.py's)."""
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{fmt(c[k])}</td>" for k in ("precision", "recall", "f1", "iou"))
        + f"<td>{c['support']}</td></tr>"
        for name, c in metrics["per_class"].items()
    )
    names = [html.escape(c["name"]) for c in metrics["classes"]]
    cm_rows = "".join(
        f"<tr><th>{n}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
        for n, row in zip(names, metrics["confusion_matrix"], strict=True)
    )
    head = "".join(f"<th>{n}</th>" for n in names)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>eoforge: map vs reference</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;text-align:right}}</style></head>
<body><h1>Map vs reference</h1>
<p>map: {html.escape(str(metrics["map"]))}<br>reference: {html.escape(str(metrics["reference"]))}
({html.escape(metrics["reference_kind"])}, {metrics["pixels"]} {html.escape(metrics["units"])} compared)</p>
<p>overall accuracy {fmt(metrics["overall_accuracy"])} · balanced accuracy {fmt(metrics["balanced_accuracy"])}
· kappa {fmt(metrics["kappa"])} · mean IoU {fmt(metrics["mean_iou"])} · macro F1 {fmt(metrics["macro_f1"])}</p>
<h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>IoU</th>
<th>support</th></tr>{rows}</table>
<h2>Confusion matrix</h2><p>rows: reference, columns: map</p>
<table><tr><th></th>{head}</tr>{cm_rows}</table></body></html>
"""


def evaluate_map(
    map_path: str | Path,
    reference: str | Path,
    out_dir: str | Path,
    column: str | None = None,
    classes: ClassTable | Sequence[str] | None = None,
    block: int = 1024,
    report: Callable[[dict[str, Any]], str] | None = render_map_report,
) -> dict[str, Any]:
    """Score ``map_path`` against ``reference``; write ``out_dir/metrics.json`` (and ``report.html``)."""
    table = classes if isinstance(classes, ClassTable) else ClassTable.parse(classes)
    cmp = compare_map(map_path, reference, column, table, block)
    metrics = cmp.metrics()
    metrics.update(
        {
            "map": str(map_path),
            "reference": str(reference),
            "reference_kind": cmp.reference_kind,
            "units": "points" if cmp.reference_kind == "points" else "pixels",
        }
    )
    out_dir = Path(out_dir)
    write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    if report is not None:
        write_text(out_dir / "report.html", report(metrics))
    log.info(
        "%s vs %s: OA %.3f over %d units", map_path, reference, metrics["overall_accuracy"], metrics["pixels"]
    )
    return metrics


def model_curves(
    predictor: Any,
    images: Sequence[str | Path],
    reference: str | Path,
    column: str | None = None,
    classes: ClassTable | None = None,
) -> CurveAccumulator:
    """ROC/PR/calibration of a :class:`~eoforge.package.Predictor` on a scene against a reference.

    Only the prediction windows holding reference pixels or points are run (the same overlapping windows and
    kept cores as ``predict``), one at a time, so memory is one window; reference classes that the model does
    not know are ignored.
    """
    from eoforge.geo import overlap_tiles
    from eoforge.io.rasters import RasterStack

    meta = predictor.meta
    k = predictor.num_classes
    index = {cid: i for i, cid in enumerate(predictor.class_ids)}
    acc = CurveAccumulator(k)
    with (
        RasterStack(images, nodata=meta.nodata) as stack,
        open_reference(reference, stack.grid, column, classes) as ref,
    ):
        g = stack.grid
        for t in overlap_tiles(g.height, g.width, meta.tile, meta.overlap):
            h, w = int(t.core.height), int(t.core.width)
            # pairs() with pixel positions as the "map values" gives the position of every reference unit
            pos, ids = ref.pairs(t.core, np.arange(h * w).reshape(h, w), np.ones((h, w), bool))
            if len(pos) == 0:
                continue
            x = stack.read(t.read)
            ph, pw = -(-x.shape[1] // 32) * 32, -(-x.shape[2] // 32) * 32
            padded = np.full((1, x.shape[0], ph, pw), np.nan, np.float32)
            padded[0, :, : x.shape[1], : x.shape[2]] = x
            rs, cs = t.core_slices
            proba = predictor.predict_proba(padded)[0][:, rs, cs].reshape(k, -1)[:, pos].T
            valid = ~np.isnan(x[0][rs, cs]).reshape(-1)[pos]
            target = np.array([index.get(int(i), IGNORE) for i in ids], dtype=np.int64)
            target[~valid] = IGNORE
            acc.update(proba, target)
    return acc
