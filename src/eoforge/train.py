"""Stage 3, train: a segmentation model fitted with PyTorch Lightning on a chip store.

Cross-entropy with the ignore index, D4 augmentation, AdamW with cosine decay, checkpoints and early stopping
on validation mIoU, and a CSV log of the curves (``OUT/train/metrics.csv``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, RichProgressBar
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassJaccardIndex

from eoforge.chips import ChipStore
from eoforge.config import IGNORE_INDEX, ModelConfig, TrainConfig
from eoforge.data import ChipDataset
from eoforge.models import create_model
from eoforge.prepare import PreparedScene

log = logging.getLogger(__name__)


class SegmentationTask(L.LightningModule):
    """LightningModule wrapping any registry model for semantic segmentation."""

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        epochs: int = 20,
    ) -> None:
        super().__init__()
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.loss = nn.CrossEntropyLoss(ignore_index=IGNORE_INDEX)
        self.val_iou = MulticlassJaccardIndex(
            num_classes=num_classes, ignore_index=IGNORE_INDEX, average="macro"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss: torch.Tensor = self.loss(logits, batch["mask"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["image"])
        loss = self.loss(logits, batch["mask"])
        self.val_iou.update(logits.max(1).indices, batch["mask"])
        self.log("val_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(logits))
        self.log("val_miou", self.val_iou, on_step=False, on_epoch=True, prog_bar=True)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.epochs, 1))
        return {"optimizer": opt, "lr_scheduler": sched}


@dataclass(frozen=True)
class TrainResult:
    model: nn.Module
    best_checkpoint: Path | None
    log_csv: Path
    epochs_run: int
    best_score: float | None
    monitor: str


def train(
    store: ChipStore,
    scene: PreparedScene,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out_dir: str | Path,
    progress: bool = False,
) -> TrainResult:
    """Fit the configured model on the store's train split, selecting the best epoch on val mIoU."""
    out = Path(out_dir) / "train"
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    n_cls = len(scene.class_ids)
    model = create_model(
        model_cfg.arch,
        len(scene.bands),
        n_cls,
        model_cfg.encoder,
        model_cfg.weights,
        model_cfg.weights_sha256,
    )
    task = SegmentationTask(model, n_cls, cfg.lr, cfg.weight_decay, cfg.epochs)
    train_ds = ChipDataset(store, "train", scene.mean, scene.std, augment=True)
    has_val = len(store.splits["val"]) > 0
    monitor, mode = ("val_miou", "max") if has_val else ("train_loss", "min")
    train_dl = DataLoader(
        train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=len(train_ds) > cfg.batch_size
    )
    val_dl = (
        DataLoader(ChipDataset(store, "val", scene.mean, scene.std), batch_size=cfg.batch_size)
        if has_val
        else None
    )
    ckpt = ModelCheckpoint(
        dirpath=out / "checkpoints", filename="best", monitor=monitor, mode=mode, save_last=True
    )
    callbacks: list[Any] = [ckpt, EarlyStopping(monitor=monitor, mode=mode, patience=cfg.patience)]
    if progress:
        callbacks.append(RichProgressBar())
    logger = CSVLogger(save_dir=str(out), name="", version="")
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        precision=cfg.precision,
        callbacks=callbacks,
        logger=logger,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=str(out),
        num_sanity_val_steps=0,
    )
    trainer.fit(task, train_dataloaders=train_dl, val_dataloaders=val_dl)
    best = Path(ckpt.best_model_path) if ckpt.best_model_path else None
    if best is not None and best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        task.load_state_dict(state)
    score = ckpt.best_model_score
    log.info(
        "trained %d epochs; best %s = %.4f",
        trainer.current_epoch,
        monitor,
        float(score) if score is not None else float("nan"),
    )
    return TrainResult(
        model=task.model.cpu().eval(),
        best_checkpoint=best,
        log_csv=out / "metrics.csv",
        epochs_run=trainer.current_epoch,
        best_score=float(score) if score is not None else None,
        monitor=monitor,
    )
