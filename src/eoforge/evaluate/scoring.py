"""Stage 4, evaluate: honest accuracy on the test split, against a per-pixel random-forest baseline.

Each test pixel counts once (chips that overlap share pixels; a pixel belongs to the first chip that covers
it). The random forest is trained on pixels of the training chips only, so both models see the same data.
Writes ``metrics.json`` and a self-contained ``report.html`` (plots embedded as PNG).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.ensemble import RandomForestClassifier
from torchmetrics.classification import MulticlassConfusionMatrix

from eoforge.chips import ChipStore
from eoforge.config import IGNORE_INDEX
from eoforge.errors import InputError
from eoforge.evaluate.metrics import metrics_from_confusion
from eoforge.evaluate.report import render_report
from eoforge.io.atomic import write_text
from eoforge.io.rasters import valid_mask
from eoforge.package import Predictor

log = logging.getLogger(__name__)


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


def _fill_nodata(pixels: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Pixels ``(n, C)`` with a band that is nodata at a valid pixel set to that band's mean, as the model sees it."""
    return np.where(np.isnan(pixels), fill[None, :], pixels)


def _train_pixels(
    store: ChipStore, max_pixels: int, seed: int, fill: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    images, labels = store.arrays()
    rng = np.random.default_rng(seed)
    chips = store.splits["train"]
    per_chip = max(1, max_pixels // max(len(chips), 1))
    xs, ys = [], []
    for j in chips:
        img, lab = np.asarray(images[j]), np.asarray(labels[j])
        ok = (lab != IGNORE_INDEX) & valid_mask(img)
        sel = np.flatnonzero(ok)
        if len(sel) > per_chip:
            sel = rng.choice(sel, per_chip, replace=False)
        xs.append(_fill_nodata(img.reshape(img.shape[0], -1)[:, sel].T, fill))
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
    fill = np.asarray(predictor.meta.mean, dtype=np.float32)
    if baseline:
        x, y = _train_pixels(store, baseline_pixels, seed=0, fill=fill)
        rf = RandomForestClassifier(n_estimators=100, n_jobs=-1, random_state=0).fit(x, y)
        log.info("random forest baseline trained on %d pixels", len(y))
    panels: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for i in range(0, len(chips), batch_size):
        sel = chips[i : i + batch_size]
        img = np.stack([np.asarray(images[j]) for j in sel])
        lab = np.stack([np.asarray(labels[j]) for j in sel]).astype(np.int64)
        mine = np.stack(owned[i : i + batch_size])
        target = np.where(mine & valid_mask(img), lab, IGNORE_INDEX)
        pred = predictor.predict_index(img).astype(np.int64)
        cm_dl.update(torch.from_numpy(pred), torch.from_numpy(target))
        if rf is not None:
            scored = target != IGNORE_INDEX  # the forest only classifies the pixels that are scored
            if scored.any():
                pixels = _fill_nodata(img.transpose(0, 2, 3, 1)[scored], fill)
                rf_pred = rf.predict(pixels).astype(np.int64)
                cm_rf.update(torch.from_numpy(rf_pred), torch.from_numpy(target[scored]))
        if len(panels) < 3:
            panels.append((img[0], lab[0], np.where(valid_mask(img[0]), pred[0], IGNORE_INDEX)))
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
