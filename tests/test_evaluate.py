from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    jaccard_score,
    precision_recall_fscore_support,
)

from eoforge.evaluate.metrics import metrics_from_confusion
from eoforge.evaluate.scoring import _coverage


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


@settings(max_examples=60, deadline=None)
@given(
    chips=st.lists(st.tuples(st.integers(0, 60), st.integers(0, 60), st.integers(1, 3)), max_size=12),
    win=st.tuples(st.integers(0, 70), st.integers(0, 70), st.integers(1, 40), st.integers(1, 40)),
)
def test_coverage_marks_exactly_the_pixels_of_chips(chips: list, win: tuple) -> None:
    """Each pixel of a window gets the split code of the chip covering it; pixels outside chips get 0.

    Chips of one split may overlap each other (a test pixel is then still counted once: it is one pixel of the
    coverage raster), chips of different splits never do in a store, so the test keeps one split per pixel."""
    size = 16
    full = np.zeros((120, 120), np.uint8)
    kept = []
    for r, c, code in chips:
        if np.isin(full[r : r + size, c : c + size], (0, code)).all():
            full[r : r + size, c : c + size] = code
            kept.append((r, c, code))
    rows = np.array([k[0] for k in kept], np.int64)
    cols = np.array([k[1] for k in kept], np.int64)
    codes = np.array([k[2] for k in kept], np.uint8)
    r0, c0, h, w = win
    got = _coverage(Window(c0, r0, w, h), rows, cols, codes, size)
    assert got.shape == (h, w)
    assert (got == full[r0 : r0 + h, c0 : c0 + w]).all()
