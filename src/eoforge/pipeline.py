"""`eoforge run`: the stages chained over one run directory.

``OUT/config.yaml  prepared/  chips/  train/  model/  metrics.json  report.html  map.tif``
Each ``stage_*`` function runs one stage from the config and what earlier stages wrote under ``OUT``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eoforge import __version__
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
    map: Path


def save_config(cfg: RunConfig, out: Path) -> None:
    write_text(out / "config.yaml", yaml.safe_dump(cfg.dump(), sort_keys=False))


def stage_prepare(cfg: RunConfig, out: Path) -> PreparedScene:
    save_config(cfg, out)
    return prepare(cfg.inputs, out)


def stage_chips(cfg: RunConfig, out: Path) -> ChipStore:
    return make_chips(PreparedScene.load(out / "prepared"), cfg.chips, out)


def stage_train(cfg: RunConfig, out: Path, progress: bool = False, resume: bool = True) -> Path:
    scene = PreparedScene.load(out / "prepared")
    store = ChipStore.load(out / "chips")
    # resume: continue an interrupted training of the same config from OUT/train/checkpoints/last.ckpt
    result = train(store, scene, cfg.model, cfg.train, out, progress=progress, resume=resume)
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
    summary = out / "train" / "summary.json"
    if summary.is_file():  # seed, precision, epochs: what makes the training reproducible
        metrics["training"] = json.loads(summary.read_text())
        write_text(out / "metrics.json", json.dumps(metrics, indent=2))
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


STAGES = ("prepare", "chips", "train", "evaluate", "predict")
_SECTIONS = {  # the config sections each stage's output depends on (through earlier stages too)
    "prepare": ("inputs",),
    "chips": ("inputs", "chips"),
    "train": ("inputs", "chips", "model", "train", "predict"),
    "evaluate": ("inputs", "chips", "model", "train", "predict"),
    "predict": ("inputs", "chips", "model", "train", "predict"),
}
_OUTPUT = {
    "prepare": "prepared/scene.json",
    "chips": "chips/chips.json",
    "train": "model/eoforge.json",
    "evaluate": "metrics.json",
    "predict": "map.tif",
}
STATE = "stages.json"


def stage_hash(cfg: RunConfig, stage: str) -> str:
    """Hash of what a stage's output depends on: the eoforge version and the config sections up to it."""
    dump = cfg.dump()
    payload = {"eoforge": __version__, **{k: dump[k] for k in _SECTIONS[stage]}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _state(out: Path) -> dict[str, str]:
    try:
        state = json.loads((out / STATE).read_text())
        return state if isinstance(state, dict) else {}
    except (OSError, ValueError):
        return {}


def run(
    cfg: RunConfig,
    out: str | Path,
    progress: bool = False,
    credits: str | None = None,
    on_stage: Callable[[str, bool], None] | None = None,
    on_progress: Progress | None = None,
    resume: bool = True,
) -> RunResult:
    """Run prepare → chips → train (+ package) → evaluate → predict into ``out``.

    With ``resume`` a stage is skipped when its output exists and was made from the same config (and every
    stage before it was skipped too), so an interrupted run continues where it stopped. ``OUT/stages.json``
    records the config hash of each finished stage.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = _state(out) if resume else {}
    rerun = False
    metrics: dict[str, Any] | None = None
    for stage in STAGES:
        h = stage_hash(cfg, stage)
        skip = not rerun and done.get(stage) == h and (out / _OUTPUT[stage]).is_file()
        log.debug("stage %s: %s", stage, "up to date" if skip else "running")
        if on_stage is not None:
            on_stage(stage, skip)
        if skip:
            continue
        rerun = True
        done.pop(stage, None)
        if stage == "prepare":
            stage_prepare(cfg, out)
        elif stage == "chips":
            stage_chips(cfg, out)
        elif stage == "train":
            stage_train(cfg, out, progress=progress, resume=resume)
        elif stage == "evaluate":
            metrics = stage_evaluate(cfg, out, credits=credits)
        else:
            stage_predict(cfg, out, on_progress=on_progress)
        done[stage] = h
        write_text(out / STATE, json.dumps(done, indent=2))
    if metrics is None:
        metrics = json.loads((out / "metrics.json").read_text())
    return RunResult(out=out, metrics=metrics, map=out / "map.tif")
