"""The self-contained HTML evaluation report (plots embedded as PNG)."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from eoforge.config import IGNORE_INDEX
from eoforge.package import Predictor

# --- plots --------------------------------------------------------------------------------------------


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _cm_plot(metrics: dict[str, Any], names: list[str]) -> str:
    sets = [("U-Net" if metrics["model"]["arch"] == "unet" else metrics["model"]["arch"], metrics)]
    if "baseline" in metrics:
        sets.append(("Random forest", metrics["baseline"]))
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4.8), squeeze=False)
    for ax, (title, m) in zip(axes[0], sets, strict=True):
        cm = np.array(m["confusion_matrix"], dtype=float)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(norm):
            ax.text(
                c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black"
            )
        ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("reference")
        ax.set_title(f"{title}: OA {m['overall_accuracy']:.3f}, kappa {m['kappa']:.3f}")
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


def _panel_plot(panels: list[tuple[np.ndarray, np.ndarray, np.ndarray]], predictor: Predictor) -> str:
    from matplotlib.colors import ListedColormap

    colors = [c.color for c in predictor.meta.classes]
    cmap = ListedColormap(colors)
    k = len(colors)
    fig, axes = plt.subplots(len(panels), 3, figsize=(9, 3 * len(panels)), squeeze=False)
    for row, (img, lab, pred) in zip(axes, panels, strict=True):
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
        for ax, t in zip(row, ("image", "reference", "prediction"), strict=True):
            ax.set_title(t)
            ax.axis("off")
    return _png(fig)


def _table(m: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{v['precision']:.3f}</td><td>{v['recall']:.3f}</td>"
        f"<td>{v['f1']:.3f}</td><td>{v['iou']:.3f}</td><td>{v['support']}</td></tr>"
        for n, v in m["per_class"].items()
    )
    return (
        "<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>IoU</th><th>support (px)</th>"
        f"</tr>{rows}</table>"
    )


def render_report(
    metrics: dict[str, Any],
    predictor: Predictor,
    panels: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    train_log: str | Path | None,
    credits: str | None,
) -> str:
    names = [c.name for c in predictor.meta.classes]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>eoforge report</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
        "</style></head><body><h1>eoforge evaluation report</h1>",
        f"<p>Chips of {predictor.meta.chip_size} px, split by spatial blocks (no pixel shared between splits): "
        + ", ".join(f"{k} {v}" for k, v in metrics.get("chips", {}).items())
        + f". Test split: {metrics['pixels']} labelled pixels (each counted once). "
        f"Model: {html.escape(metrics['model']['arch'])} / {html.escape(metrics['model']['encoder'])}, "
        f"bands: {html.escape(', '.join(predictor.meta.bands))}.</p>",
        "<h2>Headline</h2><table><tr><th>model</th><th>overall accuracy</th><th>kappa</th><th>mean IoU</th></tr>",
        f"<tr><td>{html.escape(metrics['model']['arch'])}</td><td>{metrics['overall_accuracy']:.3f}</td>"
        f"<td>{metrics['kappa']:.3f}</td><td>{metrics['mean_iou']:.3f}</td></tr>",
    ]
    if "baseline" in metrics:
        b = metrics["baseline"]
        parts.append(
            f"<tr><td>random forest (per pixel)</td><td>{b['overall_accuracy']:.3f}</td><td>{b['kappa']:.3f}</td>"
            f"<td>{b['mean_iou']:.3f}</td></tr>"
        )
    parts.append("</table>")
    parts.append(f"<h2>Per class ({html.escape(metrics['model']['arch'])})</h2>{_table(metrics)}")
    if "baseline" in metrics:
        parts.append(f"<h2>Per class (random forest)</h2>{_table(metrics['baseline'])}")
    parts.append(
        f"<h2>Confusion matrices (row-normalised)</h2><img src='data:image/png;base64,{_cm_plot(metrics, names)}'>"
    )
    if train_log is not None:
        curves = _curves_plot(Path(train_log))
        if curves:
            parts.append(f"<h2>Training curves</h2><img src='data:image/png;base64,{curves}'>")
    if panels:
        parts.append(f"<h2>Test chips</h2><img src='data:image/png;base64,{_panel_plot(panels, predictor)}'>")
    if credits:
        parts.append(f"<h2>Data credits</h2><p>{html.escape(credits)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
