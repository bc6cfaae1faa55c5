"""Training losses (segmentation-models-pytorch) and class weights against imbalance.

Unlabelled pixels (:data:`~eoforge.config.IGNORE_INDEX`) never count.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from eoforge.config import IGNORE_INDEX, TrainConfig
from eoforge.errors import InputError

log = logging.getLogger(__name__)

LOSSES = ("ce", "dice", "focal", "ce+dice", "lovasz", "ce+lovasz")


def class_weights_from_counts(counts: Sequence[int], clip: float = 10.0) -> list[float]:
    """Inverse-frequency weights ``total / (K * count)``, clipped to ``[mean / clip, mean * clip]``.

    A class without pixels gets the largest weight (it cannot contribute to the loss anyway).
    """
    c = np.asarray(counts, dtype=np.float64)
    if c.sum() <= 0:
        raise InputError(
            "class weights 'auto': the prepared labels hold no labelled pixel; check inputs.labels"
        )
    present = c > 0
    w = np.zeros_like(c)
    w[present] = c.sum() / (present.sum() * c[present])
    w = np.clip(w, 1.0 / clip, clip)
    w[~present] = w[present].max()
    return [float(x) for x in w]


class _Sum(nn.Module):
    def __init__(self, *parts: nn.Module) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = sum(
            (p(logits, target) for p in self.parts), torch.zeros((), device=logits.device)
        )
        return out


class _Float32(nn.Module):
    """Computes the wrapped loss in float32 (Dice/Lovasz sums lose precision in bf16)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.inner(logits.float(), target)
        return out


def make_loss(cfg: TrainConfig, weights: Sequence[float] | None = None) -> nn.Module:
    """The configured loss for ``(N, K, H, W)`` logits and ``(N, H, W)`` class indices."""
    from segmentation_models_pytorch import losses

    w = torch.tensor(list(weights), dtype=torch.float32) if weights is not None else None
    ce = nn.CrossEntropyLoss(weight=w, ignore_index=IGNORE_INDEX, label_smoothing=cfg.label_smoothing)
    dice = losses.DiceLoss("multiclass", ignore_index=IGNORE_INDEX)
    lovasz = losses.LovaszLoss("multiclass", ignore_index=IGNORE_INDEX)
    parts: dict[str, nn.Module] = {
        "ce": ce,
        "dice": dice,
        "focal": losses.FocalLoss("multiclass", ignore_index=IGNORE_INDEX),
        "ce+dice": _Sum(ce, dice),
        "lovasz": lovasz,
        "ce+lovasz": _Sum(ce, lovasz),
    }
    return _Float32(parts[cfg.loss])
