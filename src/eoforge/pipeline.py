"""`eoforge run`: the stages chained over one run directory.

``OUT/config.yaml  prepared/  chips/  train/  model/  metrics.json  report.html  map.tif``
Each ``stage_*`` function runs one stage from the config and what earlier stages wrote under ``OUT``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eoforge.chips import ChipStore, make_chips
from eoforge.config import RunConfig
from eoforge.evaluate import evaluate
from eoforge.io.atomic import write_text
from eoforge.package import ClassInfo, PackageMeta, add_metrics, load_package, save_package
from eoforge.predict import PredictResult, predict
from eoforge.prepare import PreparedScene, prepare
from eoforge.train import train

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class RunResult:
    out: Path
    metrics: dict[str, Any]
    map: PredictResult


def save_config(cfg: RunConfig, out: Path) -> None:
    write_text(out / "config.yaml", yaml.safe_dump(cfg.dump(), sort_keys=False))


def stage_prepare(cfg: RunConfig, out: Path) -> PreparedScene:
    save_config(cfg, out)
    return prepare(cfg.inputs, out)


def stage_chips(cfg: RunConfig, out: Path) -> ChipStore:
    return make_chips(PreparedScene.load(out / "prepared"), cfg.chips, out)


def stage_train(cfg: RunConfig, out: Path, progress: bool = False) -> Path:
    scene = PreparedScene.load(out / "prepared")
    store = ChipStore.load(out / "chips")
    result = train(store, scene, cfg.model, cfg.train, out, progress=progress)
    meta = PackageMeta(
        arch=cfg.model.arch,
        encoder=cfg.model.encoder,
        bands=scene.bands,
        mean=scene.mean,
        std=scene.std,
        nodata=scene.nodata,
        chip_size=cfg.chips.size,
        classes=[
            ClassInfo(i, n, c)
            for i, n, c in zip(scene.class_ids, scene.class_names, scene.colors, strict=True)
        ],
        tile=cfg.predict.tile or 2 * cfg.chips.size,
        overlap=cfg.predict.overlap,
    )
    return save_package(out / "model", result.model, meta, cfg.dump())


def stage_evaluate(cfg: RunConfig, out: Path, credits: str | None = None) -> dict[str, Any]:
    predictor = load_package(out / "model")
    metrics = evaluate(
        predictor,
        ChipStore.load(out / "chips"),
        out,
        train_log=out / "train" / "metrics.csv",
        credits=credits,
    )
    add_metrics(out / "model", metrics)
    return metrics


def stage_predict(cfg: RunConfig, out: Path, on_progress: Progress | None = None) -> PredictResult:
    scene = PreparedScene.load(out / "prepared")
    return predict(
        out / "model",
        scene.sources,
        out / "map.tif",
        batch_size=cfg.predict.batch_size,
        on_progress=on_progress,
    )


def run(
    cfg: RunConfig,
    out: str | Path,
    progress: bool = False,
    credits: str | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Progress | None = None,
) -> RunResult:
    """Run prepare → chips → train (+ package) → evaluate → predict into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def note(stage: str) -> None:
        log.debug("stage: %s", stage)
        if on_stage is not None:
            on_stage(stage)

    note("prepare")
    stage_prepare(cfg, out)
    note("chips")
    stage_chips(cfg, out)
    note("train")
    stage_train(cfg, out, progress=progress)
    note("evaluate")
    metrics = stage_evaluate(cfg, out, credits=credits)
    note("predict")
    result = stage_predict(cfg, out, on_progress=on_progress)
    return RunResult(out=out, metrics=metrics, map=result)
