"""Threshold curves and calibration from class probabilities, plus averaged metrics over a confusion matrix.

:class:`CurveAccumulator` takes batches of probabilities ``(N, K, H, W)`` or ``(M, K)`` and their reference
class indices, and keeps fixed-size histograms of the scores of positives and negatives per class, so curves
over a whole scene need memory in the number of bins, not pixels (scikit-learn's ``roc_curve`` needs every
score in memory; this is why the accumulation is hand-written). From them: per-class one-vs-rest ROC and PR
curves with AUC and average precision (equal to scikit-learn's on scores rounded to the bins), and top-label
calibration (reliability diagram data and expected calibration error).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np

from eoforge.io.rasters import valid_mask

IGNORE = 255


def averaged_metrics(cm: np.ndarray) -> dict[str, Any]:
    """Balanced accuracy, macro and weighted precision/recall/F1 and the row-normalised matrix.

    ``cm[i, j]`` counts units of reference class i mapped as j. Macro averages run over the classes present in
    the reference or the map (scikit-learn's default label set); weighted averages weight by reference
    support; balanced accuracy is the mean recall over classes present in the reference.
    """
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    true = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(pred > 0, tp / pred, 0.0)
        recall = np.where(true > 0, tp / true, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        rows = np.where(true[:, None] > 0, cm / true[:, None], 0.0)
    present = (true + pred) > 0
    in_ref = true > 0
    total = true.sum()

    def macro(v: np.ndarray) -> float:
        return float(v[present].mean()) if present.any() else 0.0

    def weighted(v: np.ndarray) -> float:
        return float((v * true).sum() / total) if total else 0.0

    return {
        "balanced_accuracy": float(recall[in_ref].mean()) if in_ref.any() else 0.0,
        "macro_precision": macro(precision),
        "macro_recall": macro(recall),
        "macro_f1": macro(f1),
        "weighted_precision": weighted(precision),
        "weighted_recall": weighted(recall),
        "weighted_f1": weighted(f1),
        "confusion_matrix_normalized": rows.tolist(),
    }


@dataclass(frozen=True)
class Curve:
    """One class's curve: ``x``/``y`` (ROC: FPR/TPR; PR: recall/precision), thresholds and the area."""

    x: np.ndarray
    y: np.ndarray
    thresholds: np.ndarray
    area: float
    positives: int


@dataclass(frozen=True)
class Calibration:
    """Top-label reliability: per confidence bin, mean confidence, accuracy and count; and the ECE."""

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    ece: float


class CurveAccumulator:
    """Streaming per-class ROC/PR and calibration from probabilities (see the module doc)."""

    def __init__(self, num_classes: int, bins: int = 1000, calibration_bins: int = 15) -> None:
        if num_classes < 2 or bins < 2 or calibration_bins < 1:
            raise ValueError("need num_classes >= 2, bins >= 2 and calibration_bins >= 1")
        self.k = num_classes
        self.bins = bins
        self.pos = np.zeros((num_classes, bins), dtype=np.int64)
        self.neg = np.zeros((num_classes, bins), dtype=np.int64)
        self.cal_bins = calibration_bins
        self.cal_n = np.zeros(calibration_bins, dtype=np.int64)
        self.cal_conf = np.zeros(calibration_bins, dtype=np.float64)
        self.cal_hit = np.zeros(calibration_bins, dtype=np.int64)

    def update(self, proba: np.ndarray, target: np.ndarray) -> None:
        """Add probabilities ``(N, K, H, W)`` or ``(M, K)`` with class indices ``(N, H, W)`` / ``(M,)``;
        targets equal to 255 or negative are ignored (as are pixels with non-finite probabilities)."""
        p = np.asarray(proba, dtype=np.float64)
        t = np.asarray(target).astype(np.int64)
        if p.ndim == 4:
            p = p.transpose(0, 2, 3, 1).reshape(-1, p.shape[1])
            t = t.reshape(-1)
        if p.ndim != 2 or p.shape[1] != self.k or p.shape[0] != t.shape[0]:
            raise ValueError(
                f"probabilities {proba.shape} do not match targets {np.shape(target)} and {self.k} classes"
            )
        ok = (t >= 0) & (t < self.k) & np.isfinite(p).all(axis=1)
        p, t = p[ok], t[ok]
        if len(t) == 0:
            return
        b = np.clip((p * self.bins).astype(np.int64), 0, self.bins - 1)
        onehot = t[:, None] == np.arange(self.k)[None, :]
        for c in range(self.k):
            self.pos[c] += np.bincount(b[onehot[:, c], c], minlength=self.bins)
            self.neg[c] += np.bincount(b[~onehot[:, c], c], minlength=self.bins)
        conf = p.max(axis=1)
        hit = p.argmax(axis=1) == t
        cb = np.clip((conf * self.cal_bins).astype(np.int64), 0, self.cal_bins - 1)
        self.cal_n += np.bincount(cb, minlength=self.cal_bins)
        self.cal_conf += np.bincount(cb, weights=conf, minlength=self.cal_bins)
        self.cal_hit += np.bincount(cb, weights=hit, minlength=self.cal_bins).astype(np.int64)

    def _cumulative(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """TP and FP counts for thresholds from the highest bin down (a unit is positive if its bin >= t)."""
        tp = np.cumsum(self.pos[c, ::-1])
        fp = np.cumsum(self.neg[c, ::-1])
        thr = np.arange(self.bins - 1, -1, -1) / self.bins
        return tp, fp, thr

    def roc(self) -> list[Curve]:
        """One-vs-rest ROC per class; AUC by the trapezoid rule (``nan`` without positives or negatives)."""
        out = []
        for c in range(self.k):
            tp, fp, thr = self._cumulative(c)
            p, n = tp[-1], fp[-1]
            tpr = np.concatenate([[0.0], tp / p]) if p else np.full(len(tp) + 1, np.nan)
            fpr = np.concatenate([[0.0], fp / n]) if n else np.full(len(fp) + 1, np.nan)
            auc = float(np.trapezoid(tpr, fpr)) if p and n else float("nan")
            out.append(Curve(fpr, tpr, np.concatenate([[1.0], thr]), auc, int(p)))
        return out

    def pr(self) -> list[Curve]:
        """One-vs-rest precision-recall per class; the area is the average precision
        ``sum_n (R_n - R_{n-1}) P_n`` (scikit-learn's definition)."""
        out = []
        for c in range(self.k):
            tp, fp, thr = self._cumulative(c)
            p = tp[-1]
            keep = (tp + fp) > 0
            tp, fp, thr = tp[keep], fp[keep], thr[keep]
            if not p or len(tp) == 0:
                out.append(Curve(np.array([0.0]), np.array([1.0]), np.array([1.0]), float("nan"), int(p)))
                continue
            precision = tp / (tp + fp)
            recall = tp / p
            ap = float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))
            out.append(
                Curve(
                    np.concatenate([[0.0], recall]),
                    np.concatenate([[1.0], precision]),
                    np.concatenate([[1.0], thr]),
                    ap,
                    int(p),
                )
            )
        return out

    def calibration(self) -> Calibration:
        n = self.cal_n
        with np.errstate(invalid="ignore", divide="ignore"):
            conf = np.where(n > 0, self.cal_conf / n, np.nan)
            acc = np.where(n > 0, self.cal_hit / n, np.nan)
        total = n.sum()
        ece = float(np.nansum(n * np.abs(acc - conf)) / total) if total else float("nan")
        return Calibration(np.linspace(0, 1, self.cal_bins + 1), conf, acc, n.copy(), ece)

    def to_json(self, names: list[str], points: int = 101) -> dict[str, Any]:
        """AUCs, APs, ECE and curves thinned to ``points`` per class (``null`` where undefined)."""

        def num(x: float) -> float | None:
            return float(x) if np.isfinite(x) else None

        def thin(cv: Curve) -> dict[str, Any]:
            idx = np.unique(np.linspace(0, len(cv.x) - 1, min(points, len(cv.x))).astype(int))
            return {"x": [num(v) for v in cv.x[idx]], "y": [num(v) for v in cv.y[idx]]}

        roc, pr, cal = self.roc(), self.pr(), self.calibration()
        return {
            "roc_auc": {n: num(c.area) for n, c in zip(names, roc, strict=True)},
            "average_precision": {n: num(c.area) for n, c in zip(names, pr, strict=True)},
            "expected_calibration_error": num(cal.ece),
            "roc": {n: thin(c) for n, c in zip(names, roc, strict=True)},
            "pr": {n: thin(c) for n, c in zip(names, pr, strict=True)},
            "reliability": {
                "edges": cal.edges.tolist(),
                "confidence": [num(v) for v in cal.confidence],
                "accuracy": [num(v) for v in cal.accuracy],
                "count": cal.count.tolist(),
            },
        }


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 4))
    ax = fig.add_subplot()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.02))
    return fig, ax


def plot_roc(curves: list[Curve], names: list[str], colors: list[str] | None = None) -> bytes:
    """PNG of per-class ROC curves with their AUC in the legend."""
    fig, ax = _figure("ROC (one vs rest)", "false positive rate", "true positive rate")
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    for i, (cv, n) in enumerate(zip(curves, names, strict=True)):
        if np.isfinite(cv.area):
            ax.plot(cv.x, cv.y, lw=1.5, color=colors[i] if colors else None, label=f"{n} (AUC {cv.area:.3f})")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def plot_pr(curves: list[Curve], names: list[str], colors: list[str] | None = None) -> bytes:
    """PNG of per-class precision-recall curves with their average precision in the legend."""
    fig, ax = _figure("Precision-recall (one vs rest)", "recall", "precision")
    for i, (cv, n) in enumerate(zip(curves, names, strict=True)):
        if np.isfinite(cv.area):
            ax.plot(cv.x, cv.y, lw=1.5, color=colors[i] if colors else None, label=f"{n} (AP {cv.area:.3f})")
    ax.legend(fontsize=7, loc="lower left")
    return _png(fig)


def plot_reliability(cal: Calibration) -> bytes:
    """PNG reliability diagram: accuracy per confidence bin against the diagonal, with the ECE."""
    fig, ax = _figure(f"Reliability (ECE {cal.ece:.3f})", "confidence", "accuracy")
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    width = np.diff(cal.edges)
    ok = cal.count > 0
    ax.bar(cal.edges[:-1][ok], cal.accuracy[ok], width=width[ok], align="edge", alpha=0.6, edgecolor="k")
    ax.plot(cal.confidence[ok], cal.accuracy[ok], "o-", color="C3", ms=3)
    return _png(fig)


def curves_on_chips(
    predictor: Any,
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int = 16,
    bins: int = 1000,
    calibration_bins: int = 15,
) -> CurveAccumulator:
    """ROC/PR/calibration of a :class:`~eoforge.package.Predictor` on chips: raw float32 ``(N, C, H, W)``
    (NaN at nodata, those pixels ignored) and class indices ``(N, H, W)`` (255 = unlabelled)."""
    acc = CurveAccumulator(predictor.num_classes, bins, calibration_bins)
    for i in range(0, len(images), batch_size):
        img = np.asarray(images[i : i + batch_size], dtype=np.float32)
        lab = np.asarray(labels[i : i + batch_size]).astype(np.int64)
        lab = np.where(valid_mask(img), lab, IGNORE)
        acc.update(predictor.predict_proba(img), lab)
    return acc
