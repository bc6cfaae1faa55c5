from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    jaccard_score,
    precision_recall_fscore_support,
)

from eoforge.evaluate.metrics import metrics_from_confusion
from eoforge.evaluate.scoring import _owned_masks


def test_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 5000)
    p = np.where(rng.random(5000) < 0.7, y, rng.integers(0, 4, 5000))
    p[p == 3] = 2  # class 3 never predicted: precision 0 by convention
    m = metrics_from_confusion(confusion_matrix(y, p, labels=range(4)), ["a", "b", "c", "d"], [1, 2, 3, 4])
    assert m["overall_accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, p))
    pr, rc, f1, sup = precision_recall_fscore_support(y, p, labels=range(4), zero_division=0)
    iou = jaccard_score(y, p, labels=range(4), average=None, zero_division=0)
    for k, n in enumerate("abcd"):
        c = m["per_class"][n]
        assert (c["precision"], c["recall"], c["f1"], c["iou"], c["support"]) == pytest.approx(
            (pr[k], rc[k], f1[k], iou[k], sup[k])
        )
    assert m["mean_iou"] == pytest.approx(iou.mean())
    assert m["classes"][0] == {"id": 1, "name": "a"}


def test_mean_iou_skips_classes_absent_everywhere() -> None:
    cm = np.array([[5, 0, 0], [1, 4, 0], [0, 0, 0]])
    m = metrics_from_confusion(cm, ["a", "b", "c"], [1, 2, 3])
    assert m["mean_iou"] == pytest.approx((5 / 6 + 4 / 5) / 2)


def test_each_test_pixel_counts_once() -> None:
    rows = np.array([0, 0, 16, 40])
    cols = np.array([0, 16, 16, 40])
    masks = _owned_masks(rows, cols, 32)
    cover = np.zeros((80, 80), int)
    for r, c, m in zip(rows, cols, masks, strict=True):
        cover[r : r + 32, c : c + 32] += m
    union = np.zeros((80, 80), bool)
    for r, c in zip(rows, cols, strict=True):
        union[r : r + 32, c : c + 32] = True
    assert cover.max() == 1 and (cover == 1).sum() == union.sum()
