"""The task: what a run learns, as one small frozen object the stages ask instead of branching on strings.

- ``segmentation``: dense class labels per pixel (rasterized polygons or a label raster); a class per pixel.
- ``pixel``: sparse labels (points, a few labelled pixels); same per-pixel models and loss, unlabelled pixels
  ignored, chips kept when they hold at least one labelled pixel, metrics on labelled pixels only.
- ``scene``: one class per chip (EuroSAT folders); softmax, accuracy / macro F1 / kappa.
- ``scene-multilabel``: several labels per chip (BigEarthNet); sigmoid, per-label F1, mean average precision.

Each answers: the loss, the prediction from logits, the metrics (torchmetrics), the metric monitored for model
selection, the shape of targets (and the batch key holding them), and what ``predict`` writes for a scene.
One LightningModule (:class:`eoforge.train.task.TaskModule`) trains every task by asking these; the stages ask
:func:`get_task` instead of comparing task names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from eoforge.config import IGNORE_INDEX
from eoforge.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from eoforge.config import TrainConfig

Targets = Literal["dense", "sparse", "single", "multi"]


def present_class_miou(cm: torch.Tensor) -> torch.Tensor:
    """Mean IoU over the classes present in the reference (rows of ``cm`` with pixels).

    A class absent from the reference has no defined IoU on this split: it is left out, not counted as 0
    (which would punish predicting it) or 1 (which would reward never predicting it).
    """
    cm = cm.to(torch.float64)
    tp = cm.diag()
    true = cm.sum(1)
    union = true + cm.sum(0) - tp
    present = true > 0
    if not bool(present.any()):
        return torch.zeros((), dtype=torch.float32, device=cm.device)
    return (tp[present] / union[present]).mean().to(torch.float32)


class PresentClassMIoU(MulticlassConfusionMatrix):
    """The mean IoU of :func:`present_class_miou` as a torchmetrics metric (a confusion matrix underneath, so
    it syncs across ranks and shares its state with kappa in a ``MetricCollection``)."""

    def compute(self) -> torch.Tensor:
        return present_class_miou(super().compute())


class ConfusionAccuracy(MulticlassConfusionMatrix):
    """Overall accuracy from the confusion matrix (shares the one state of the per-pixel metrics: separate
    torchmetrics classes count every validation pixel three times, 3.1x slower: benchmarks/val_metrics.py)."""

    def compute(self) -> torch.Tensor:
        cm = super().compute().to(torch.float64)
        return (cm.diag().sum() / cm.sum().clamp_min(1)).to(torch.float32)


class PresentClassF1(MulticlassConfusionMatrix):
    """Macro F1 over the classes present in the reference (as :func:`present_class_miou`)."""

    def compute(self) -> torch.Tensor:
        cm = super().compute().to(torch.float64)
        tp, true, pred = cm.diag(), cm.sum(1), cm.sum(0)
        present = true > 0
        if not bool(present.any()):
            return torch.zeros((), dtype=torch.float32, device=cm.device)
        f1 = 2 * tp[present] / (true[present] + pred[present])
        return f1.mean().to(torch.float32)


@dataclass(frozen=True)
class Task:
    """One learning task; see the module docstring for the four defined here (``TASKS``)."""

    name: str
    targets: Targets
    description: str
    monitor: str
    predict_writes: tuple[str, ...]
    mlm_task: str
    multilabel_threshold: float = 0.5

    @property
    def per_pixel(self) -> bool:
        """Logits ``(N, K, H, W)`` and targets ``(N, H, W)`` (else ``(N, K)`` and ``(N,)`` / ``(N, K)``)."""
        return self.targets in ("dense", "sparse")

    @property
    def multilabel(self) -> bool:
        return self.targets == "multi"

    @property
    def sparse(self) -> bool:
        """Sparse labels (points): a chip is kept with one labelled pixel, point/line vectors are accepted."""
        return self.targets == "sparse"

    @property
    def target_key(self) -> str:
        """The batch key holding the targets: ``mask`` (per-pixel chips) or ``target`` (one per chip)."""
        return "mask" if self.per_pixel else "target"

    @property
    def writes_class_map(self) -> bool:
        """``predict`` writes a class map per pixel (the streaming engine); else a label per window."""
        return self.per_pixel

    def min_labelled_pixels(self, chip_size: int, min_valid: float) -> int:
        """Labelled pixels a chip needs to be kept: a fraction of the chip for dense labels, one for sparse."""
        if self.sparse:
            return 1
        return max(1, math.ceil(min_valid * chip_size * chip_size)) if self.per_pixel else 0

    def labelled_fraction(self, configured: float) -> float:
        """The chips' ``min_labelled`` under this task: as configured for dense labels, 0 for sparse ones
        (a chip is then kept with one labelled pixel)."""
        return 0.0 if self.sparse else configured

    def loss(
        self, class_weights: Sequence[float] | None = None, train: TrainConfig | None = None
    ) -> nn.Module:
        """The training loss. Per-pixel tasks with a train config: the configured smp loss
        (``train.loss``, :func:`eoforge.train.losses.make_loss`), unlabelled pixels ignored; else
        cross-entropy (per pixel with the ignore index, or per chip), or binary cross-entropy for multi-label
        (the weights as ``pos_weight``)."""
        w = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        if self.multilabel:
            return nn.BCEWithLogitsLoss(pos_weight=w)
        if self.per_pixel and train is not None:
            from eoforge.train.losses import make_loss  # train imports this module

            return make_loss(train, class_weights)
        return nn.CrossEntropyLoss(weight=w, ignore_index=IGNORE_INDEX if self.per_pixel else -100)

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """Targets as the loss wants them: class indices (int64) or multi-hot labels (float)."""
        return y.float() if self.multilabel else y.long()

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Class indices (argmax over dim 1) or multi-hot labels (sigmoid above the threshold)."""
        if self.multilabel:
            return (torch.sigmoid(logits) >= self.multilabel_threshold).long()
        return logits.max(1).indices  # as argmax, ~15x faster on CPU (predict/engine.py)

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """:meth:`predict` on scores already computed (``(N, K)``): indices ``(N,)`` or multi-hot ``(N, K)``."""
        if self.multilabel:
            return (scores >= self.multilabel_threshold).astype(np.uint8)
        return scores.argmax(1)

    def scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-class scores in [0, 1]: softmax, or independent sigmoids for multi-label."""
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 1)

    def metric_input(self, logits: torch.Tensor) -> torch.Tensor:
        """What :meth:`metrics` are updated with during training: class indices (the same accuracy, F1,
        kappa and IoU as the probabilities give, without a softmax over every pixel), or the sigmoid scores
        that average precision needs."""
        return self.scores(logits) if self.multilabel else self.predict(logits)

    def metrics(self, num_classes: int) -> MetricCollection:
        """Metrics fed with ``update(scores(logits), target)`` or ``update(metric_input(logits), target)``;
        unlabelled pixels are ignored; per-pixel ``miou`` averages the classes present in the reference."""
        if num_classes < 2 and not self.multilabel:
            raise InputError(f"task {self.name} needs at least 2 classes, got {num_classes}")
        if self.multilabel:
            return MetricCollection(
                {
                    "map": MultilabelAveragePrecision(num_labels=num_classes, average="macro"),
                    "f1_macro": MultilabelF1Score(num_labels=num_classes, average="macro"),
                    "f1_per_label": MultilabelF1Score(num_labels=num_classes, average="none"),
                }
            )
        if self.per_pixel:  # one confusion matrix (a single compute group), classes present in the reference
            n, ig = num_classes, IGNORE_INDEX
            return MetricCollection(
                {
                    "accuracy": ConfusionAccuracy(num_classes=n, ignore_index=ig),
                    "f1_macro": PresentClassF1(num_classes=n, ignore_index=ig),
                    "kappa": MulticlassCohenKappa(num_classes=n, ignore_index=ig),
                    "miou": PresentClassMIoU(num_classes=n, ignore_index=ig),
                }
            )
        return MetricCollection(
            {
                "accuracy": MulticlassAccuracy(num_classes=num_classes, average="micro"),
                "f1_macro": MulticlassF1Score(num_classes=num_classes, average="macro"),
                "kappa": MulticlassCohenKappa(num_classes=num_classes),
            }
        )


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "segmentation",
            "dense",
            "a class per pixel from dense labels (polygons or a label raster)",
            monitor="val_miou",
            predict_writes=("class map GeoTIFF (COG)",),
            mlm_task="semantic-segmentation",
        ),
        Task(
            "pixel",
            "sparse",
            "a class per pixel from sparse labels (points); unlabelled pixels are ignored",
            monitor="val_miou",
            predict_writes=("class map GeoTIFF (COG)",),
            mlm_task="semantic-segmentation",
        ),
        Task(
            "scene",
            "single",
            "one class per chip (EuroSAT-style folders or a CSV)",
            monitor="val_accuracy",
            predict_writes=("coarse label raster, a pixel per window", "GeoParquet of windows with scores"),
            mlm_task="scene-classification",
        ),
        Task(
            "scene-multilabel",
            "multi",
            "several labels per chip (BigEarthNet-style), sigmoid outputs",
            monitor="val_map",
            predict_writes=("coarse label raster, a band per label", "GeoParquet of windows with scores"),
            mlm_task="classification",
        ),
    )
}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name lists the valid ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise InputError(f"unknown task '{name}'; choose one of: {', '.join(TASKS)}") from None
