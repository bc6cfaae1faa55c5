"""Accuracy metrics from a confusion matrix, and bootstrap confidence intervals over spatial blocks.

Every average over classes (mean IoU, macro precision/recall/F1, balanced accuracy) runs over the classes
present in the reference of the split being scored, the same way for every model: a class with no reference
pixel has no defined recall or IoU, so it is reported as n/a (``None``) and excluded, never counted as 0 or 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HEADLINE = ("kappa", "mean_iou", "overall_accuracy")


def fmt(v: float | None) -> str:
    """A metric for people: three decimals, or n/a where it is undefined (a class absent from the reference)."""
    return "n/a" if v is None else f"{v:.3f}"


def _scores(cm: np.ndarray) -> dict[str, np.ndarray | float]:
    """Vectorised core over a stack of confusion matrices ``(..., K, K)`` (true class on rows)."""
    cm = cm.astype(np.float64)
    total = cm.sum(axis=(-2, -1))
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    true = cm.sum(axis=-1)
    pred = cm.sum(axis=-2)
    present = true > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        oa = np.where(total > 0, tp.sum(-1) / total, np.nan)
        pe = np.where(total > 0, (true * pred).sum(-1) / total**2, np.nan)
        kappa = np.where(pe < 1, (oa - pe) / (1 - pe), 1.0)
        iou = tp / (true + pred - tp)
        n_present = present.sum(-1)
        miou = np.where(n_present > 0, np.where(present, iou, 0).sum(-1) / n_present, np.nan)
    return {"overall_accuracy": oa, "kappa": kappa, "mean_iou": miou}


def metrics_from_confusion(cm: np.ndarray, names: list[str], ids: list[int]) -> dict[str, Any]:
    """Overall and balanced accuracy, Cohen's kappa, per-class precision/recall/F1/IoU/support, macro and
    weighted averages and mean IoU from ``cm[i, j]`` = pixels of true class i predicted as j.

    A class absent from the reference gets ``None`` for recall, F1 and IoU (and precision) and is left out of
    every average; ``classes_absent`` names such classes.
    """
    cm = np.asarray(cm, dtype=np.float64)
    k = len(names)
    if cm.shape != (k, k):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not fit {k} classes")
    total = cm.sum()
    tp = np.diag(cm)
    true = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    present = true > 0
    core = _scores(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(present, tp / true, np.nan)
        f1 = np.where(
            present,
            np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0),
            np.nan,
        )
        iou = np.where(present, tp / (true + pred - tp), np.nan)

    def avg(v: np.ndarray, w: np.ndarray | None = None) -> float | None:
        if not present.any():
            return None
        if w is None:
            return float(v[present].mean())
        return float((v[present] * w[present]).sum() / w[present].sum())

    def opt(x: float) -> float | None:
        return None if np.isnan(x) else float(x)

    return {
        "overall_accuracy": opt(float(core["overall_accuracy"])),
        "kappa": opt(float(core["kappa"])),
        "mean_iou": opt(float(core["mean_iou"])),
        "balanced_accuracy": avg(recall),
        "macro_precision": avg(precision),
        "macro_recall": avg(recall),
        "macro_f1": avg(f1),
        "weighted_f1": avg(f1, true),
        "pixels": int(total),
        "classes": [{"id": i, "name": n} for i, n in zip(ids, names, strict=True)],
        "classes_absent": [n for n, p in zip(names, present, strict=True) if not p],
        "per_class": {
            n: {
                "precision": float(precision[c]) if present[c] else None,
                "recall": opt(recall[c]),
                "f1": opt(f1[c]),
                "iou": opt(iou[c]),
                "support": int(true[c]),
                "predicted": int(pred[c]),
            }
            for c, n in enumerate(names)
        },
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }


def bootstrap_intervals(
    block_cms: np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, list[float] | None]:
    """Percentile bootstrap intervals of OA, kappa and mean IoU, resampling whole spatial blocks.

    ``block_cms`` is ``(B, K, K)``: one confusion matrix per test block. Resampling blocks rather than pixels
    keeps the spatial correlation of errors inside a block, so the interval is not too narrow. Mean IoU in a
    resample averages the classes present in that resample's reference.
    """
    b = len(block_cms)
    if n <= 0 or b == 0:
        return dict.fromkeys(HEADLINE)
    rng = np.random.default_rng(seed)
    # multinomial counts = how often each block is drawn; one matrix product gives every resample's matrix
    draws = rng.multinomial(b, np.full(b, 1.0 / b), size=n).astype(np.float64)
    cms = np.einsum("nb,bkl->nkl", draws, block_cms.astype(np.float64))
    scores = _scores(cms)
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    out: dict[str, list[float] | None] = {}
    for key in HEADLINE:
        v = np.asarray(scores[key])
        v = v[~np.isnan(v)]
        out[key] = [float(np.percentile(v, lo)), float(np.percentile(v, hi))] if len(v) else None
    return out
