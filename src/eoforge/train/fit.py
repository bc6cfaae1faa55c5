"""Stage 3, train: fit a registry model with PyTorch Lightning on a chip store.

Checkpoints (``OUT/train/checkpoints/best.ckpt`` on val mIoU, ``last.ckpt`` every epoch), early stopping, a
CSV log of the curves (``OUT/train/metrics.csv``) plus an optional TensorBoard or MLflow tracker, and
``OUT/train/summary.json`` (seed, precision, epochs, best score). A run that stops (killed, interrupted)
continues from ``last.ckpt`` when started again with the same config: same epoch, optimiser and scheduler.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger
from torch import nn

from eoforge import __version__
from eoforge.chips import ChipStore
from eoforge.config import ModelConfig, TrainConfig
from eoforge.errors import InputError
from eoforge.io.atomic import write_text
from eoforge.models import create_model
from eoforge.normalise import clamps
from eoforge.prepare import PreparedScene
from eoforge.tasks import Task, get_task
from eoforge.train import history
from eoforge.train.augment import BatchAugment
from eoforge.train.datamodule import ChipDataModule
from eoforge.train.losses import class_weights_from_counts
from eoforge.train.speed import resolve_precision, uses_cuda
from eoforge.train.task import TaskModule

log = logging.getLogger(__name__)

RESUME = "resume.json"


@dataclass(frozen=True)
class TrainResult:
    model: nn.Module
    best_checkpoint: Path | None
    log_csv: Path
    epochs_run: int
    best_score: float | None
    monitor: str
    seed: int = 0
    precision: str = "32-true"
    resumed: bool = False


class _Reseed(Callback):
    """Re-seeds torch at every epoch start, so shuffling and augmentation of epoch e do not depend on whether
    the run was resumed (Lightning checkpoints do not carry the random generators' states)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.manual_seed(self.seed * 100003 + trainer.current_epoch)


def quiet_cpu_trainer(epochs: int) -> L.Trainer:
    """A one-process CPU Lightning trainer without logger, checkpoints, progress bar or sanity validation:
    the small in-memory fits (pixel series, scene chips) that keep their own records."""
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )


def resolve_class_weights(cfg: TrainConfig, scene: PreparedScene) -> list[float] | None:
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "auto":
        w = class_weights_from_counts(scene.class_counts, cfg.class_weight_clip)
        log.info(
            "class weights (auto): %s", dict(zip(scene.class_names, [round(x, 2) for x in w], strict=True))
        )
        return w
    if len(cfg.class_weights) != len(scene.class_ids):
        raise InputError(
            f"train.class_weights has {len(cfg.class_weights)} weights for {len(scene.class_ids)} classes; "
            "give one per class"
        )
    return list(cfg.class_weights)


def _trackers(cfg: TrainConfig, out: Path, params: dict[str, Any]) -> list[Logger]:
    loggers: list[Logger] = [CSVLogger(save_dir=str(out), name="", version="")]
    if cfg.logger == "tensorboard":
        try:
            from lightning.pytorch.loggers import TensorBoardLogger

            tb = TensorBoardLogger(save_dir=str(out), name="tensorboard", version="", default_hp_metric=False)
            tb.experiment  # noqa: B018 (fails here, not mid-training, when no writer package is installed)
        except ModuleNotFoundError:
            raise InputError(
                "train.logger: tensorboard is not installed; pip install tensorboard, or use logger: csv"
            ) from None
        loggers.append(tb)
    elif cfg.logger == "mlflow":
        try:
            import mlflow  # noqa: F401
        except ModuleNotFoundError:
            raise InputError(
                "train.logger: mlflow is not installed; pip install mlflow, or use logger: csv"
            ) from None
        from lightning.pytorch.loggers import MLFlowLogger

        uri, artifacts = _mlflow_store(out)
        loggers.append(MLFlowLogger(experiment_name="eoforge", tracking_uri=uri, artifact_location=artifacts))
    for lg in loggers[1:]:
        lg.log_hyperparams(params)
    return loggers


def _mlflow_store(out: Path) -> tuple[str, str | None]:
    """Where MLflow logs: ``MLFLOW_TRACKING_URI`` when set (a server, a database), else a SQLite database
    ``OUT/train/mlflow.db`` with artifacts in ``OUT/train/mlartifacts``. Not the ``OUT/train/mlruns`` file store
    of older eoforge: MLflow >= 3.7 refuses to open file stores unless ``MLFLOW_ALLOW_FILE_STORE`` is set."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    if importlib.util.find_spec("sqlalchemy") is None:
        raise InputError(
            "train.logger: mlflow's local store needs sqlalchemy (mlflow-skinny lacks it); pip install mlflow, "
            "or set MLFLOW_TRACKING_URI to a tracking server"
        )
    db = (out / "mlflow.db").resolve()
    return f"sqlite:///{db}", (out / "mlartifacts").resolve().as_uri()


class _Checkpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, whose saved state follows the run folder when it was moved or copied.

    Lightning restores the best score only when the checkpoint folder is the one it saved from; else the first
    epoch after a resume becomes "best" whatever its score, and the best path points into the old folder (a
    moved run that resumed packaged a worse model than the one it had found). Paths saved in the old folder
    are mapped to the same file names in this one.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            new = self.dirpath

            def moved(path: Any) -> Any:
                if isinstance(path, str) and path and os.path.dirname(path) == old:
                    return os.path.join(new, os.path.basename(path))
                return path

            log.info("checkpoints were saved in %s; continuing in %s", old, new)
            state_dict = {
                **state_dict,
                "dirpath": new,
                "best_model_path": moved(state_dict.get("best_model_path")),
                "kth_best_model_path": moved(state_dict.get("kth_best_model_path")),
                "last_model_path": moved(state_dict.get("last_model_path")),
                "best_k_models": {moved(k): v for k, v in (state_dict.get("best_k_models") or {}).items()},
            }
        super().load_state_dict(state_dict)


def _strategy(cfg: TrainConfig) -> str:
    # plain "ddp" re-executes the command line in child processes, which would re-run the whole
    # `eoforge run` pipeline in each; without an external launcher (torchrun, SLURM) spawn the ranks instead
    external = any(k in os.environ for k in ("LOCAL_RANK", "SLURM_NTASKS", "TORCHELASTIC_RUN_ID"))
    several = isinstance(cfg.devices, int) and cfg.devices > 1
    # one process in all (1 device, 1 node): Lightning's ddp runs it in this process, no child to spawn
    # (spawning one cost ~40 s on a GPU machine: a fresh interpreter, imports, the data again)
    single = cfg.devices == 1 and cfg.num_nodes == 1
    if not external and not single and (cfg.strategy == "ddp" or (cfg.strategy == "auto" and several)):
        log.info("strategy %s on %s devices without a launcher: using ddp_spawn", cfg.strategy, cfg.devices)
        return "ddp_spawn"
    return cfg.strategy


def _progress(trainer: L.Trainer, ckpt: ModelCheckpoint, last: Path) -> tuple[int, float | None]:
    """Epochs run and best monitored score. With spawned ranks (``ddp_spawn``) this process's trainer ran no
    epoch and Lightning sends back only the best checkpoint's path, so both are read from ``last.ckpt``."""
    if ckpt.best_model_score is not None or not last.is_file():
        score = ckpt.best_model_score
        return trainer.current_epoch, float(score) if score is not None else None
    state = torch.load(last, map_location="cpu", weights_only=True)
    saved = state.get("callbacks", {}).get(ckpt.state_key, {}).get("best_model_score")
    return int(state["epoch"]) + 1, float(saved) if saved is not None else None


def _resume_key(
    model_cfg: ModelConfig, cfg: TrainConfig, store: ChipStore, scene: PreparedScene, task: Task
) -> str:
    payload = {
        "eoforge": __version__,
        "task": task.name,
        "model": model_cfg.model_dump(mode="json"),
        "train": cfg.model_dump(mode="json"),
        "splits": {k: len(v) for k, v in store.splits.items()},
        "bands": scene.bands,
        "classes": scene.class_ids,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def train(
    store: ChipStore,
    scene: PreparedScene,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    out_dir: str | Path,
    progress: bool = False,
    callbacks: list[Callback] | None = None,
    resume: bool = True,
    task: Task | None = None,
) -> TrainResult:
    """Fit the configured model on the store's train split for the ``task`` (default: segmentation), selecting
    the best epoch on the task's monitored metric (val mIoU for per-pixel tasks).

    The task gives the loss (the configured ``train.loss`` with class weights for per-pixel tasks), the
    validation metrics and the monitored metric. With ``resume`` a ``last.ckpt`` left by a run with the same config is continued; otherwise earlier
    checkpoints and logs in ``OUT/train`` are removed first. ``callbacks`` are extra Lightning callbacks.
    """
    task = task if task is not None else get_task("segmentation")
    if not task.per_pixel:
        raise InputError(
            f"task {task.name}: chip stores hold per-pixel labels; train scene classifiers with "
            "eoforge.scene.fit.train_scene on a folder or CSV of chips"
        )
    out = Path(out_dir) / "train"
    ckpt_dir = out / "checkpoints"
    key = _resume_key(model_cfg, cfg, store, scene, task)
    last = ckpt_dir / "last.ckpt"
    try:
        same = json.loads((out / RESUME).read_text()).get("key") == key
    except (OSError, ValueError, AttributeError):
        same = False
    resumed = resume and same and last.is_file()
    if not resumed:
        for stale in (ckpt_dir, out / history.LOG, out / history.BEFORE, out / "tensorboard"):
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / RESUME, json.dumps({"key": key}))
    else:
        log.info("resuming training from %s", last)
        if os.environ.get("LOCAL_RANK", "0") == "0":  # launcher-started ranks > 0 run this too; rank 0 logs
            epoch = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"])
            log.info(
                "kept %d rows of the training log up to epoch %d",
                history.keep_before_resume(out, epoch),
                epoch,
            )

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    n_cls = len(scene.class_ids)
    model = create_model(
        model_cfg.arch,
        len(scene.bands),
        n_cls,
        model_cfg.encoder,
        model_cfg.weights,
        model_cfg.weights_sha256,
        bands=scene.bands,
        weights_bands=model_cfg.weights_bands,
        encoder_depth=model_cfg.encoder_depth,
    )
    plan = resolve_precision(cfg.precision, cfg.accelerator)
    class_weights = resolve_class_weights(cfg, scene)
    module = TaskModule(
        model,
        n_cls,
        cfg.lr,
        cfg.weight_decay,
        cfg.epochs,
        task=task,
        loss=task.loss(class_weights, cfg),
        augment=BatchAugment(cfg.augment, store.size) if cfg.augment is not None else None,
        channels_last=plan.channels_last,
        freeze_encoder_epochs=model_cfg.freeze_encoder_epochs,
        compile=cfg.compile,
    )
    data = ChipDataModule(
        store,
        scene.mean,
        scene.std,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        cache_mb=cfg.cache_mb,
        pin_memory=uses_cuda(cfg.accelerator),
        seed=cfg.seed,
        clamp=clamps(scene.recipe),
    )
    has_val = data.has("val")
    monitor, mode = (task.monitor, "max") if has_val else ("train_loss", "min")
    ckpt = _Checkpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode=mode)
    # last.ckpt every epoch, whether or not the score improved (Lightning 2.6's save_last writes it only with
    # a new best, so a resumed run would go back to the best epoch): a second, unmonitored checkpoint
    latest = _Checkpoint(dirpath=ckpt_dir, filename="last", monitor=None, enable_version_counter=False)
    cbs: list[Callback] = [
        ckpt,
        latest,
        EarlyStopping(monitor=monitor, mode=mode, patience=cfg.patience),
        _Reseed(cfg.seed),
        *([EMAWeightAveraging(decay=cfg.ema)] if cfg.ema is not None else []),
        *(callbacks or []),
    ]
    if progress:
        cbs.append(RichProgressBar())
    params = {"model": model_cfg.model_dump(mode="json"), "train": cfg.model_dump(mode="json")}
    loggers = _trackers(cfg, out, params)
    trainer = L.Trainer(
        max_epochs=cfg.epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=_strategy(cfg),
        num_nodes=cfg.num_nodes,
        precision=plan.precision,  # type: ignore[arg-type]
        deterministic=cfg.deterministic,
        callbacks=cbs,
        logger=loggers,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=1,
        default_root_dir=str(out),
        num_sanity_val_steps=0,
        limit_val_batches=1.0 if has_val else 0,
    )
    trainer.fit(module, datamodule=data, ckpt_path=str(last) if resumed else None)
    if trainer.is_global_zero:
        history.merge_after_resume(out)
    best = Path(ckpt.best_model_path) if ckpt.best_model_path else None
    if best is not None and best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    epochs_run, score = _progress(trainer, ckpt, last)
    log.info(
        "trained %d epochs; best %s = %.4f",
        epochs_run,
        monitor,
        float(score) if score is not None else float("nan"),
    )
    result = TrainResult(
        model=module.model.cpu().eval().to(memory_format=torch.contiguous_format),
        best_checkpoint=best,
        log_csv=out / "metrics.csv",
        epochs_run=epochs_run,
        best_score=float(score) if score is not None else None,
        monitor=monitor,
        seed=cfg.seed,
        precision=plan.precision,
        resumed=resumed,
    )
    summary = {
        "seed": cfg.seed,
        "precision": plan.precision,
        "channels_last": plan.channels_last,
        "deterministic": cfg.deterministic,
        "world_size": trainer.world_size,
        "strategy": type(trainer.strategy).__name__,
        "epochs_run": result.epochs_run,
        "monitor": monitor,
        "best_score": result.best_score,
        "resumed": resumed,
        "task": task.name,
        "loss": cfg.loss,
        "class_weights": class_weights,
    }
    write_text(out / "summary.json", json.dumps(summary, indent=2))
    _log_final(loggers[1:], params, monitor, result)
    return result


def _log_final(trackers: list[Logger], params: dict[str, Any], monitor: str, result: TrainResult) -> None:
    """The run's outcome on the experiment trackers (the curves were logged epoch by epoch)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    final = {"epochs_run": float(result.epochs_run)}
    if result.best_score is not None:
        final[f"best_{monitor}"] = result.best_score
    for tracker in trackers:
        if isinstance(tracker, TensorBoardLogger):
            # TensorBoard's HPARAMS tab shows a config only together with metrics: written once, at the end
            tracker.log_hyperparams(params, final)
        else:
            tracker.log_metrics(final, step=result.epochs_run)
        tracker.finalize("success")
