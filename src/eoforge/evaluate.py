"""Stage 4, evaluate: honest accuracy on the test split, against a per-pixel random-forest baseline.

Each test pixel counts once (chips that overlap share pixels; a pixel belongs to the first chip that covers
it). The random forest is trained on pixels of the training chips only, so both models see the same data.
Writes ``metrics.json`` and a self-contained ``report.html`` (plots embedded as PNG).
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from sklearn.ensemble import RandomForestClassifier
from torchmetrics.classification import MulticlassConfusionMatrix

from eoforge.chips import ChipStore
from eoforge.config import IGNORE_INDEX
from eoforge.errors import InputError
from eoforge.io.atomic import write_text
from eoforge.package import Predictor

log = logging.getLogger(__name__)


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


def _owned_masks(rows: np.ndarray, cols: np.ndarray, size: int) -> list[np.ndarray]:
    """For chips at (rows, cols), the pixels each chip owns: those no earlier chip in the list covers."""
    masks = []
    for i in range(len(rows)):
        m = np.ones((size, size), dtype=bool)
        near = np.nonzero((np.abs(rows[:i] - rows[i]) < size) & (np.abs(cols[:i] - cols[i]) < size))[0]
        for j in near:
            dr, dc = rows[j] - rows[i], cols[j] - cols[i]
            m[max(dr, 0) : max(dr + size, 0), max(dc, 0) : max(dc + size, 0)] = False
        masks.append(m)
    return masks


def _test_pixels(store: ChipStore) -> tuple[list[int], list[np.ndarray]]:
    idx = store.index()
    test = idx[idx["split"] == "test"].sort_values(["row", "col"])
    chips = test["chip"].to_list()
    return chips, _owned_masks(test["row"].to_numpy(), test["col"].to_numpy(), store.size)


def _train_pixels(store: ChipStore, max_pixels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = store.arrays()
    rng = np.random.default_rng(seed)
    chips = store.splits["train"]
    per_chip = max(1, max_pixels // max(len(chips), 1))
    xs, ys = [], []
    for j in chips:
        img, lab = np.asarray(images[j]), np.asarray(labels[j])
        ok = (lab != IGNORE_INDEX) & ~np.isnan(img).any(axis=0)
        sel = np.flatnonzero(ok)
        if len(sel) > per_chip:
            sel = rng.choice(sel, per_chip, replace=False)
        xs.append(img.reshape(img.shape[0], -1)[:, sel].T)
        ys.append(lab.reshape(-1)[sel])
    return np.concatenate(xs), np.concatenate(ys)


def evaluate(
    predictor: Predictor,
    store: ChipStore,
    out_dir: str | Path,
    train_log: str | Path | None = None,
    baseline: bool = True,
    baseline_pixels: int = 100_000,
    credits: str | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Score the model (and a random-forest baseline) on the test split; write metrics.json and report.html."""
    out_dir = Path(out_dir)
    names = [c.name for c in predictor.meta.classes]
    ids = predictor.class_ids
    k = len(names)
    images, labels = store.arrays()
    chips, owned = _test_pixels(store)
    if not chips:
        raise InputError(
            f"{store.root}: the chip store has no test chips; set chips.split.test > 0 and re-run chips"
        )
    cm_dl = MulticlassConfusionMatrix(num_classes=k, ignore_index=IGNORE_INDEX)
    cm_rf = MulticlassConfusionMatrix(num_classes=k, ignore_index=IGNORE_INDEX)
    rf = None
    if baseline:
        x, y = _train_pixels(store, baseline_pixels, seed=0)
        rf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0).fit(x, y)
        log.info("random forest baseline trained on %d pixels", len(y))
    panels: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i in range(0, len(chips), batch_size):
        sel = chips[i : i + batch_size]
        img = np.stack([np.asarray(images[j]) for j in sel])
        lab = np.stack([np.asarray(labels[j]) for j in sel]).astype(np.int64)
        mine = np.stack(owned[i : i + batch_size])
        target = np.where(mine & ~np.isnan(img).any(axis=1), lab, IGNORE_INDEX)
        pred = predictor.predict_index(img).astype(np.int64)
        cm_dl.update(torch.from_numpy(pred), torch.from_numpy(target))
        if rf is not None:
            scored = target != IGNORE_INDEX  # the forest only classifies the pixels that are scored
            if scored.any():
                pixels = img.transpose(0, 2, 3, 1)[scored]
                rf_pred = rf.predict(pixels).astype(np.int64)
                cm_rf.update(torch.from_numpy(rf_pred), torch.from_numpy(target[scored]))
        if len(panels) < 3:
            panels.append((img[0], lab[0], np.where(np.isnan(img[0]).any(axis=0), IGNORE_INDEX, pred[0])))
    metrics = metrics_from_confusion(cm_dl.compute().numpy(), names, ids)
    metrics["model"] = {"arch": predictor.meta.arch, "encoder": predictor.meta.encoder}
    metrics["split"] = "test"
    metrics["test_chips"] = len(chips)
    metrics["chips"] = {split: len(ids) for split, ids in store.splits.items()}
    if rf is not None:
        metrics["baseline"] = {
            "model": "random_forest (scikit-learn, 100 trees, per-pixel band values)",
            **metrics_from_confusion(cm_rf.compute().numpy(), names, ids),
        }
    write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    write_text(out_dir / "report.html", render_report(metrics, predictor, panels, train_log, credits))
    return metrics


# --- report --------------------------------------------------------------------------------------------


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
