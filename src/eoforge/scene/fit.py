"""Train and score scene classifiers (timm models by name) with the ``Task``-driven LightningModule."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from eoforge.errors import InputError
from eoforge.scene.samples import SceneSamples, read_chip
from eoforge.tasks import Task, get_task
from eoforge.train.fit import quiet_cpu_trainer
from eoforge.train.task import TaskModule

log = logging.getLogger(__name__)


def create_classifier(name: str, in_channels: int, num_classes: int) -> nn.Module:
    """A timm classifier by name (``resnet18``, ``efficientnet_b0``, ``convnext_atto``...), random init."""
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:8] or timm.list_models()[:8]
        raise InputError(f"unknown timm classifier '{name}'; e.g. {', '.join(close)} (timm.list_models())")
    model: nn.Module = timm.create_model(
        name, pretrained=False, in_chans=in_channels, num_classes=num_classes
    )
    return model


class SceneDataset(Dataset[dict[str, torch.Tensor]]):
    """Chips ``{"image": (C, S, S) standardised, "target": () int64 or (K,) float}``, D4 augmentation optional."""

    def __init__(
        self,
        samples: SceneSamples,
        idx: np.ndarray,
        size: int,
        mean: np.ndarray,
        std: np.ndarray,
        augment: bool = False,
    ) -> None:
        self.samples, self.idx, self.size = samples, idx, size
        self.mean, self.std, self.augment = mean, std, augment
        self.targets = samples.targets()

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = int(self.idx[i])
        x = (read_chip(self.samples.samples[j], self.size) - self.mean[:, None, None]) / self.std[
            :, None, None
        ]
        image = torch.from_numpy(np.nan_to_num(x, nan=0.0).astype(np.float32))
        if self.augment:
            image = torch.rot90(image, int(torch.randint(0, 4, ()).item()), dims=(-2, -1))
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
        return {"image": image.contiguous(), "target": torch.as_tensor(self.targets[j])}


def band_stats(samples: SceneSamples, idx: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean / std over the given chips (read once; chips are small)."""
    s = np.zeros(0)
    sq = np.zeros(0)
    n = np.zeros(0)
    for j in idx:
        x = read_chip(samples.samples[int(j)], size).reshape(-1, size * size).astype(np.float64)
        if not s.size:
            s, sq, n = np.zeros(len(x)), np.zeros(len(x)), np.zeros(len(x))
        s += np.nansum(x, 1)
        sq += np.nansum(x * x, 1)
        n += np.isfinite(x).sum(1)
    mean = s / np.maximum(n, 1)
    std = np.sqrt(np.maximum(sq / np.maximum(n, 1) - mean**2, 0))
    return mean.astype(np.float32), np.where(std > 0, std, 1).astype(np.float32)


@dataclass(frozen=True)
class SceneModel:
    model: nn.Module
    task: Task
    arch: str
    classes: tuple[str, ...]
    size: int
    mean: np.ndarray
    std: np.ndarray

    @torch.no_grad()
    def scores(self, samples: SceneSamples, idx: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """``(N, K)`` class scores (softmax or sigmoid) of the given chips."""
        self.model.eval()
        ds = SceneDataset(samples, idx, self.size, self.mean, self.std)
        out = [self.task.scores(self.model(b["image"])) for b in DataLoader(ds, batch_size=batch_size)]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)), np.float32)


def train_scene(
    samples: SceneSamples,
    train_idx: np.ndarray,
    val_idx: np.ndarray | None = None,
    arch: str = "resnet18",
    size: int = 64,
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
) -> SceneModel:
    """Fit a timm classifier on the ``train_idx`` chips; single- or multi-label from the samples."""
    L.seed_everything(seed, workers=True, verbose=False)
    task = get_task("scene-multilabel" if samples.multilabel else "scene")
    mean, std = band_stats(samples, train_idx, size)
    model = create_classifier(arch, len(mean), len(samples.classes))
    fitted = SceneModel(model, task, arch, samples.classes, size, mean, std)
    train_dl = DataLoader(
        SceneDataset(samples, train_idx, size, mean, std, augment=True), batch_size=batch_size, shuffle=True
    )
    val_dl = (
        DataLoader(SceneDataset(samples, val_idx, size, mean, std), batch_size=batch_size)
        if val_idx is not None and len(val_idx)
        else None
    )
    # the task's loss (softmax or sigmoid), targets ("target") and validation metrics; D4 in the dataset
    module = TaskModule(model, len(samples.classes), lr, 1e-4, epochs, task=task)
    quiet_cpu_trainer(epochs).fit(module, train_dl, val_dl)
    model.eval()
    log.info("trained %s (%s) on %d chips for %d epochs", arch, task.name, len(train_idx), epochs)
    return fitted


def evaluate_scene(fitted: SceneModel, samples: SceneSamples, idx: np.ndarray) -> dict[str, Any]:
    """Task metrics on the chips: accuracy / macro F1 / kappa, or mAP / macro F1 / per-label F1."""
    scores = torch.from_numpy(fitted.scores(samples, idx))
    target = torch.from_numpy(samples.targets()[idx]).long()
    metrics = fitted.task.metrics(len(fitted.classes))
    metrics.update(scores, target)
    out: dict[str, Any] = {}
    for k, v in metrics.compute().items():
        if v.ndim == 0:
            out[k] = float(v)
        else:
            out[k] = {c: float(x) for c, x in zip(fitted.classes, v.tolist(), strict=True)}
    out["n"] = len(idx)
    return out
