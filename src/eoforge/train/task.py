"""The LightningModule: any model trained for any :class:`~eoforge.tasks.Task`.

The task gives the loss (unless one is passed), the targets' batch key and type, the validation metrics and
the monitored metric; this module adds the optimiser, schedule, batch augmentation, encoder freezing,
channels-last and ``torch.compile``. It trains segmentation and pixel chips, temporal models on pixel series
(1x1 chips) and scene classifiers alike.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from torch import nn

from eoforge.errors import InputError
from eoforge.models.registry import channels_last_ok
from eoforge.tasks import Task, get_task, present_class_miou

__all__ = ["SegmentationTask", "TaskModule", "make_optimizer", "present_class_miou"]

log = logging.getLogger(__name__)


def make_optimizer(params: Iterable[nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused (one kernel over all parameters instead of a loop of per-tensor ops) where the parameters
    live on CPU or CUDA: on the demo U-Net's bf16 CPU step it saves ~10 % (docs/PERFORMANCE.md, Training)."""
    params = list(params)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused or None)


class TaskModule(L.LightningModule):
    """Loss and validation metrics of the ``task``; optimiser (AdamW, cosine decay), batch augmentation.

    Validation logs ``val_loss`` and every scalar of ``task.metrics`` prefixed ``val_`` (``val_miou`` averages
    the IoU of the classes present in the validation reference); ``task.monitor`` names the one to select on.
    ``augment`` is called as ``augment(image, target)`` on training batches.
    """

    def __init__(
        self,
        model: nn.Module,
        num_classes: int,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        epochs: int = 20,
        loss: nn.Module | None = None,
        augment: nn.Module | None = None,
        channels_last: bool = False,
        freeze_encoder_epochs: int = 0,
        compile: bool = False,
        task: Task | None = None,
    ) -> None:
        super().__init__()
        self.task = task if task is not None else get_task("segmentation")
        self.model = model
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.loss = loss if loss is not None else self.task.loss()
        self.augment = augment
        self.channels_last = channels_last and channels_last_ok(model)
        self.freeze_encoder_epochs = freeze_encoder_epochs
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.val_metrics = self.task.metrics(num_classes).clone(prefix="val_")
        # kept outside the module tree (a tuple is not registered as a submodule), so checkpoints hold the
        # plain model's keys once ("model.*"), with or without compile
        self._forward: tuple[nn.Module] = (torch.compile(model) if compile else model,)  # type: ignore[assignment]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # older checkpoints held the model twice ("model.*" and "_forward.*"): keep one copy
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("_forward.")]:
            del state[key]

    def setup(self, stage: str) -> None:
        # several CPU ranks on one machine: each takes its share of the cores instead of all of them
        # (torch's default), which would oversubscribe the CPU devices-fold
        trainer = self.trainer
        if trainer.world_size > 1 and isinstance(trainer.accelerator, CPUAccelerator):
            share = max(1, (os.cpu_count() or 1) // max(1, trainer.num_devices))
            if torch.get_num_threads() > share:
                torch.set_num_threads(share)
                log.info("rank %d: %d torch thread(s)", trainer.global_rank, share)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._forward[0](x)
        return out

    def on_after_batch_transfer(
        self, batch: dict[str, torch.Tensor], dataloader_idx: int
    ) -> dict[str, torch.Tensor]:
        key = self.task.target_key
        image, target = batch["image"], batch[key]
        if self.augment is not None and self.trainer.training:
            image, target = self.augment(image, target)
        if self.channels_last:
            image = image.contiguous(memory_format=torch.channels_last)
        return {**batch, "image": image, key: target}

    def on_train_epoch_start(self) -> None:
        encoder = getattr(self.model, "encoder", None)
        if self.freeze_encoder_epochs <= 0 or not isinstance(encoder, nn.Module):
            return
        frozen = self.current_epoch < self.freeze_encoder_epochs
        for p in encoder.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            encoder.eval()  # batch-norm statistics stay those of the pretrained weights too
        if self.current_epoch in (0, self.freeze_encoder_epochs):
            log.info("epoch %d: encoder %s", self.current_epoch, "frozen" if frozen else "trainable")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss: torch.Tensor = self.loss(logits, self.task.target(batch[self.task.target_key]))
        if not torch.isfinite(loss):
            # a diverged run would otherwise end "successfully" with an all-NaN model (issue 12, cause 3)
            raise InputError(
                f"training diverged: the loss is {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}; "
                f"lower train.lr (now {self.lr}) or check the inputs for extreme values"
            )
        # sync_dist: with several ranks the epoch's loss is the mean over all of them (a no-op on one)
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(logits),
            sync_dist=True,
        )
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        logits = self(batch["image"])
        target = batch[self.task.target_key]
        loss = self.loss(logits, self.task.target(target))
        self.val_metrics.update(self.task.metric_input(logits), target.long())
        self.log(
            "val_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=len(logits),
            sync_dist=True,
        )

    def on_validation_epoch_end(self) -> None:
        # the metrics hold their states (synced across ranks by compute); scalars only (not per-label F1)
        values = {k: v for k, v in self.val_metrics.compute().items() if v.ndim == 0}
        monitored = values.pop(self.task.monitor)
        self.log(self.task.monitor, monitored, prog_bar=True, sync_dist=False)
        self.log_dict(values, sync_dist=False)
        self.val_metrics.reset()

    def configure_optimizers(self) -> Any:
        opt = make_optimizer(self.parameters(), self.lr, self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.epochs, 1))
        return {"optimizer": opt, "lr_scheduler": sched}


SegmentationTask = TaskModule
"""The earlier name of :class:`TaskModule` (a segmentation task by default)."""
