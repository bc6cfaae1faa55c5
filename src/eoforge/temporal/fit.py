"""Train and score temporal / pixel models on labelled pixel series, without any raster.

Each series is a ``(T*B, 1, 1)`` "chip" of one pixel, so the registry models train here exactly as they run over
chips and scenes. Training reuses PyTorch Lightning (seeding, optimiser loop, precision, devices) with fixed
epochs and a cosine schedule: there is no validation split to select on, so the held-out test set stays unseen.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from eoforge.errors import InputError, PackageError
from eoforge.models import create_model
from eoforge.tasks import get_task
from eoforge.temporal.series import PixelSeries
from eoforge.train.fit import quiet_cpu_trainer
from eoforge.train.task import TaskModule

log = logging.getLogger(__name__)


class Jitter(nn.Module):
    """Gaussian jitter of the standardised values, the usual time-series augmentation (training batches)."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        self.sigma = sigma

    def forward(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return image + self.sigma * torch.randn_like(image), target


class MixupModule(TaskModule):
    """The ``pixel`` task's :class:`~eoforge.train.task.TaskModule` with mixup (Zhang et al. 2018), a regulariser
    of small training sets: each training batch is blended with a shuffled copy of itself, weight
    ``lam ~ Beta(mixup, mixup)``, and so are the losses of the two targets. Hand-written (a few lines): the
    blend of the two losses needs the training step, which the generic ``augment(image, target)`` hook lacks."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        lr: float,
        weight_decay: float,
        epochs: int,
        mixup: float,
        loss: nn.Module,
        augment: nn.Module | None,
    ) -> None:
        super().__init__(
            model, num_classes, lr, weight_decay, epochs, loss=loss, augment=augment, task=get_task("pixel")
        )
        self.mixup = mixup

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.mixup <= 0:
            return super().training_step(batch, batch_idx)
        x, y = batch["image"], self.task.target(batch[self.task.target_key])
        lam = float(torch.distributions.Beta(self.mixup, self.mixup).sample())
        perm = torch.randperm(len(y), device=y.device)
        logits = self(lam * x + (1 - lam) * x[perm])
        loss: torch.Tensor = lam * self.loss(logits, y) + (1 - lam) * self.loss(logits, y[perm])
        if not torch.isfinite(loss):
            raise InputError(
                f"training diverged: the loss is {loss.item()} at epoch {self.current_epoch}; lower the "
                f"learning rate (now {self.lr}) or check the inputs for extreme values"
            )
        self.log("train_loss", loss, on_step=False, on_epoch=True, batch_size=len(y))
        return loss


class SeriesChips(Dataset[dict[str, torch.Tensor]]):
    """Series as one-pixel chips: ``{"image": (T*B, 1, 1), "mask": (1, 1) int64}``, the batches of the
    ``pixel`` task's :class:`~eoforge.train.task.TaskModule`."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y.long()[:, None, None]

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.x[i], "mask": self.y[i]}


class SoftmaxMean(nn.Module):
    """A seed ensemble: the log of the members' mean class probabilities, so ``softmax`` of the output is that
    mean and ``argmax`` its most probable class; fully convolutional like the members."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = torch.stack([torch.softmax(m(x), 1) for m in self.members]).mean(0)
        return torch.log(p.clamp_min(1e-12))


@dataclass(frozen=True)
class SeriesModel:
    """A trained model with the per-band normalisation it was trained with."""

    model: nn.Module
    arch: str
    encoder: str
    mean: np.ndarray
    std: np.ndarray
    classes: tuple[str, ...]
    bands: tuple[str, ...]
    n_times: int

    def normalize(self, channels: np.ndarray) -> torch.Tensor:
        """``(N, T*B)`` raw values -> ``(N, T*B, 1, 1)`` standardised tensor, gaps (NaN) at the band mean (0)."""
        z = (channels - np.tile(self.mean, self.n_times)) / np.tile(self.std, self.n_times)
        return torch.from_numpy(np.nan_to_num(z, nan=0.0).astype(np.float32))[:, :, None, None]

    @torch.no_grad()
    def predict_proba(self, channels: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        self.model.eval()
        x = self.normalize(channels)
        out = [
            torch.softmax(self.model(x[i : i + batch_size]), 1)[:, :, 0, 0]
            for i in range(0, len(x), batch_size)
        ]
        return torch.cat(out).numpy()

    def predict(self, channels: np.ndarray) -> np.ndarray:
        return self.predict_proba(channels).argmax(1)


@dataclass(frozen=True)
class SeriesScores:
    """Accuracy, Cohen's kappa, macro F1 and the confusion matrix (rows = reference) on one sample."""

    accuracy: float
    kappa: float
    macro_f1: float
    confusion: list[list[int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "kappa": self.kappa,
            "macro_f1": self.macro_f1,
            "confusion": self.confusion,
        }


def score(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> SeriesScores:
    from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score

    labels = list(range(n_classes))
    return SeriesScores(
        accuracy=float(accuracy_score(y_true, y_pred)),
        kappa=float(cohen_kappa_score(y_true, y_pred, labels=labels)),
        macro_f1=float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        confusion=confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    )


def band_stats(series: PixelSeries, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band mean and standard deviation over all dates of the given samples (gaps ignored)."""
    v = series.values[idx].reshape(-1, len(series.bands))
    mean = np.nanmean(v, axis=0)
    std = np.nanstd(v, axis=0)
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def train_series(
    series: PixelSeries,
    train_idx: np.ndarray,
    arch: str = "tempcnn",
    encoder: str | None = None,
    epochs: int = 50,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    seed: int = 0,
    noise: float = 0.0,
    ensemble: int = 1,
    label_smoothing: float = 0.0,
    mixup: float = 0.0,
) -> SeriesModel:
    """Fit a registry model (``tempcnn``, ``ltae``, ``pixel-mlp``...) on the ``train_idx`` series;
    ``noise`` > 0 adds Gaussian jitter (in standard deviations) to the training inputs; ``ensemble`` > 1
    trains that many members (seeds ``seed``, ``seed + 1``, ...) and averages their probabilities
    (:class:`SoftmaxMean`); ``label_smoothing`` (0 to 1) softens the targets and ``mixup`` > 0 (the Beta
    parameter, e.g. 0.2) blends pairs of training series (:class:`MixupModule`)."""
    from eoforge.config import IGNORE_INDEX
    from eoforge.temporal.models import encoder_for_dates  # (also registers the temporal models)

    if ensemble < 1:
        raise InputError(f"ensemble {ensemble}: give at least 1 member")
    if not 0 <= label_smoothing < 1:
        raise InputError(f"label smoothing {label_smoothing}: give a value in [0, 1), e.g. 0.1")
    if mixup < 0:
        raise InputError(f"mixup {mixup}: give the Beta parameter >= 0 (0 = off, e.g. 0.2)")
    n_times, n_bands = series.n_times, len(series.bands)
    # "w32" -> "t12-w32" for the temporal models; a date count that disagrees with the series is an error
    encoder = encoder_for_dates(arch, encoder, n_times) if encoder else f"t{n_times}"
    mean, std = band_stats(series, train_idx)
    members: list[nn.Module] = []
    for k in range(ensemble):
        L.seed_everything(seed + k, workers=True, verbose=False)
        model = create_model(arch, n_times * n_bands, len(series.classes), encoder)
        fitted = SeriesModel(model, arch, encoder, mean, std, series.classes, series.bands, n_times)
        x = fitted.normalize(series.channels(train_idx))
        y = torch.from_numpy(series.labels[train_idx])
        loader = DataLoader(
            SeriesChips(x, y), batch_size=batch_size, shuffle=True, drop_last=len(y) > batch_size
        )
        module = MixupModule(  # the "pixel" task: one labelled pixel per "chip"
            model,
            len(series.classes),
            lr,
            weight_decay,
            epochs,
            mixup,
            loss=nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing),
            augment=Jitter(noise) if noise > 0 else None,
        )
        quiet_cpu_trainer(epochs).fit(module, train_dataloaders=loader)
        model.cpu().eval()
        members.append(model)
    log.info("trained %s x%d on %d series for %d epochs", arch, ensemble, len(train_idx), epochs)
    final = members[0] if ensemble == 1 else SoftmaxMean(members).eval()
    return SeriesModel(final, arch, encoder, mean, std, series.classes, series.bands, n_times)


def evaluate_series(fitted: SeriesModel, series: PixelSeries, idx: np.ndarray) -> SeriesScores:
    return score(series.labels[idx], fitted.predict(series.channels(idx)), len(series.classes))


def random_forest(
    series: PixelSeries, train_idx: np.ndarray, test_idx: np.ndarray, seed: int = 0, n_estimators: int = 500
) -> SeriesScores:
    """The baseline: a scikit-learn random forest on the same flattened series (gaps filled with band means)."""
    from sklearn.ensemble import RandomForestClassifier

    mean, _ = band_stats(series, train_idx)
    fill = np.tile(mean, series.n_times)

    def feats(idx: np.ndarray) -> np.ndarray:
        x = series.channels(idx)
        return np.where(np.isnan(x), fill, x)

    rf = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, n_jobs=1)
    rf.fit(feats(train_idx), series.labels[train_idx])
    return score(series.labels[test_idx], rf.predict(feats(test_idx)), len(series.classes))


def check_output_folder(out_dir: str | Path) -> Path:
    """Refuse an output that exists and is not a series model folder (it would be replaced whole)."""
    out = Path(out_dir)
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "series_model.json").is_file())
    ):
        raise InputError(
            f"{out}: exists and is not a series model folder; give a new folder (it would be replaced)"
        )
    return out


def save_series_model(fitted: SeriesModel, out_dir: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``model.pt`` (state dict), ``series_model.json`` (layout, normalisation, classes) and
    ``metrics.json`` into ``out_dir``, atomically (the folder appears whole or not at all)."""
    from eoforge.io.atomic import atomic_dir

    out = Path(out_dir)
    if out.exists() and (
        not out.is_dir() or (any(out.iterdir()) and not (out / "series_model.json").is_file())
    ):
        raise InputError(
            f"{out}: exists and is not a series model folder; give a new folder (it would be replaced)"
        )
    meta = {
        "arch": fitted.arch,
        "encoder": fitted.encoder,
        "mean": fitted.mean.tolist(),
        "std": fitted.std.tolist(),
        "classes": list(fitted.classes),
        "bands": list(fitted.bands),
        "n_times": fitted.n_times,
        "ensemble": len(fitted.model.members) if isinstance(fitted.model, SoftmaxMean) else 1,
    }
    with atomic_dir(out) as tmp:
        torch.save(fitted.model.state_dict(), tmp / "model.pt")
        (tmp / "series_model.json").write_text(json.dumps(meta, indent=2))
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


def load_series_model(path: str | Path) -> SeriesModel:
    """Rebuild a model written by :func:`save_series_model` through the registry."""
    import eoforge.temporal.models  # noqa: F401  (registers the temporal models)

    path = Path(path)
    try:
        meta = json.loads((path / "series_model.json").read_text())
        state = torch.load(path / "model.pt", map_location="cpu", weights_only=True)
    except (OSError, json.JSONDecodeError, RuntimeError) as exc:
        raise PackageError(
            f"{path}: not a series model folder ({exc}); train one with `eoforge series train`"
        ) from None
    n_in = meta["n_times"] * len(meta["bands"])
    members = [
        create_model(meta["arch"], n_in, len(meta["classes"]), meta["encoder"])
        for _ in range(int(meta.get("ensemble", 1)))
    ]
    model = members[0] if len(members) == 1 else SoftmaxMean(members)
    model.load_state_dict(state)
    model.eval()
    return SeriesModel(
        model,
        meta["arch"],
        meta["encoder"],
        np.asarray(meta["mean"], np.float32),
        np.asarray(meta["std"], np.float32),
        tuple(meta["classes"]),
        tuple(meta["bands"]),
        int(meta["n_times"]),
    )
