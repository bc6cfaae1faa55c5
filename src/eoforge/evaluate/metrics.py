"""Accuracy metrics from a confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np


def metrics_from_confusion(cm: np.ndarray, names: list[str], ids: list[int]) -> dict[str, Any]:
    """Overall accuracy, Cohen's kappa, per-class precision/recall/F1/IoU/support and mean IoU.

    ``cm[i, j]`` counts pixels of true class i predicted as j. Mean IoU averages the classes present in the
    reference or the prediction (a class absent from both has no defined IoU).
    """
    cm = cm.astype(np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    true = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    oa = tp.sum() / total if total else 0.0
    pe = (true * pred).sum() / total**2 if total else 0.0
    kappa = (oa - pe) / (1 - pe) if pe < 1 else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        union = true + pred - tp
        iou = np.where(union > 0, tp / union, 0.0)
    present = union > 0
    return {
        "overall_accuracy": float(oa),
        "kappa": float(kappa),
        "mean_iou": float(iou[present].mean()) if present.any() else 0.0,
        "pixels": int(total),
        "classes": [{"id": i, "name": n} for i, n in zip(ids, names, strict=True)],
        "per_class": {
            n: {
                "precision": float(precision[k]),
                "recall": float(recall[k]),
                "f1": float(f1[k]),
                "iou": float(iou[k]),
                "support": int(true[k]),
            }
            for k, n in enumerate(names)
        },
        "confusion_matrix": cm.astype(np.int64).tolist(),
    }
