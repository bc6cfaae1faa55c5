"""The self-contained HTML evaluation report: a jinja2 template (autoescaped), plots embedded as PNG.

Warnings come first, then the headline (kappa and mean IoU with their 95 % intervals before overall
accuracy) for the model and every baseline, so no number is read without its caveats.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from eoforge.config import IGNORE_INDEX
from eoforge.evaluate.metrics import fmt
from eoforge.package import Predictor

# --- plots --------------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


@dataclass(frozen=True)
class Panel:
    """One test chip: raw image ``(C, S, S)``, reference and prediction class indices (255 = none)."""

    image: np.ndarray
    reference: np.ndarray
    prediction: np.ndarray
    title: str = ""


def _cm_plot(metrics: dict[str, Any]) -> str:
    sets = [(metrics["model"]["arch"], metrics)]
    if "baseline" in metrics:
        sets.append(("random forest", metrics["baseline"]))
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.8), squeeze=False)
    for ax, (title, m) in zip(axes[0], sets, strict=True):
        cm = np.array(m["confusion_matrix"], dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(norm):
            ax.text(
                c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black"
            )
        names = [c["name"] for c in m["classes"]]
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("reference")
        ax.set_title(f"{title}: kappa {fmt(m['kappa'])}, OA {fmt(m['overall_accuracy'])}")
    return _png(fig)


def _curves_plot(train_log: Path) -> str | None:
    if not train_log.is_file():
        return None
    df = pd.read_csv(train_log)
    if "epoch" not in df:
        return None
    g = df.groupby("epoch").mean(numeric_only=True)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for col in ("train_loss", "val_loss"):
        if col in g:
            a1.plot(g.index, g[col], label=col)
    a1.set_xlabel("epoch")
    a1.set_title("loss (log scale)")
    a1.set_yscale("log")
    a1.legend()
    if "val_miou" in g:
        a2.plot(g.index, g["val_miou"], color="tab:green")
    a2.set_xlabel("epoch")
    a2.set_title("validation mIoU")
    return _png(fig)


def _rgb(img: np.ndarray, bands: list[str]) -> np.ndarray:
    order = [bands.index(b) for b in ("red", "green", "blue") if b in bands]
    if len(order) < 3:
        order = [min(2, img.shape[0] - 1), min(1, img.shape[0] - 1), 0]
    rgb = img[order].transpose(1, 2, 0).astype(np.float64)
    lo, hi = np.nanpercentile(rgb, 2), np.nanpercentile(rgb, 98)
    return np.clip(np.nan_to_num((rgb - lo) / max(hi - lo, 1e-9)), 0, 1)


def _panel_plot(panels: list[Panel], predictor: Predictor) -> str:
    from matplotlib.colors import ListedColormap

    colors = [c.color for c in predictor.meta.classes]
    cmap = ListedColormap(colors)
    k = len(colors)
    fig, axes = plt.subplots(len(panels), 3, figsize=(9, 3 * len(panels)), squeeze=False)
    for row, panel in zip(axes, panels, strict=True):
        img, lab, pred = panel.image, panel.reference, panel.prediction
        row[0].imshow(_rgb(img, predictor.meta.bands))
        row[1].imshow(
            np.ma.masked_equal(lab, IGNORE_INDEX), cmap=cmap, vmin=-0.5, vmax=k - 0.5, interpolation="nearest"
        )
        row[2].imshow(
            np.ma.masked_equal(pred, IGNORE_INDEX),
            cmap=cmap,
            vmin=-0.5,
            vmax=k - 0.5,
            interpolation="nearest",
        )
        for ax, t in zip(row, ("image", "reference", "delivered map"), strict=True):
            ax.set_title(f"{panel.title}: {t}" if panel.title else t, fontsize=9)
            ax.axis("off")
    return _png(fig)


_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("eoforge.evaluate", "templates"),
    autoescape=jinja2.select_autoescape(["html", "j2"]),
    undefined=jinja2.StrictUndefined,
)
_ENV.filters["f3"] = fmt


def _interval(m: dict[str, Any], key: str) -> str:
    ci = (m.get("ci95") or {}).get(key)
    return f"{fmt(m[key])} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else fmt(m[key])


_ENV.filters["ci"] = _interval


def importance_png(importance: dict[str, float]) -> str:
    """Bar chart of the permutation band importance (drop in mean IoU when a band is shuffled)."""
    names = list(importance)
    fig, ax = plt.subplots(figsize=(6, 0.35 * len(names) + 1.2))
    ax.barh(names[::-1], [importance[n] for n in names][::-1], color="tab:blue")
    ax.set_xlabel("drop in mean IoU when the band is shuffled")
    return _png(fig)


def render_report(
    metrics: dict[str, Any],
    predictor: Predictor,
    panels: list[Panel],
    train_log: str | Path | None,
    credits: str | None,
    config: dict[str, Any] | None = None,
    figures: dict[str, str] | None = None,
) -> str:
    """The report; ``figures`` holds extra base64 PNGs by name (chips, roc, pr, reliability, importance)."""
    curves = _curves_plot(Path(train_log)) if train_log is not None else None
    rows = [{"name": metrics["model"]["arch"], "kind": "model", **metrics}, *metrics.get("baselines", [])]
    return _ENV.get_template("report.html.j2").render(
        m=metrics,
        meta=predictor.meta,
        rows=rows,
        cm_png=_cm_plot(metrics),
        curves_png=curves,
        panels_png=_panel_plot(panels, predictor) if panels else None,
        credits=credits,
        config_yaml=yaml.safe_dump(config, sort_keys=False) if config else None,
        fig=figures or {},
    )
