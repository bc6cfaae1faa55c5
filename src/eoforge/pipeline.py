"""`eoforge run`: the stages chained over one run directory.

``OUT/config.yaml  prepared/  chips/  train/  model/  metrics.json  report.html  map.tif``
Each ``stage_*`` function runs one stage from the config and what earlier stages wrote under ``OUT``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from eoforge import __version__
from eoforge.chips import ChipStore, make_chips
from eoforge.config import RunConfig, check_devices, config_warnings
from eoforge.errors import EoforgeError, InputError, output_error
from eoforge.evaluate import evaluate
from eoforge.io.atomic import OUTPUT_ERRNOS, sweep_temporaries, write_text
from eoforge.io.guard import check_run_folder
from eoforge.io.space import WHAT as SPACE_WHAT
from eoforge.io.space import check_free_space, stage_bytes
from eoforge.io.state import changed_files, fingerprint, load_state, paths_in, run_lock, tree_fingerprint
from eoforge.package import ClassInfo, PackageMeta, add_metrics, load_package, save_package
from eoforge.predict import PredictResult, predict
from eoforge.prepare import PreparedScene, prepare
from eoforge.prepare.stack import open_prepare_source
from eoforge.tasks import get_task
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
    # points/lines as labels are sparse labels: only with chips that keep any labelled pixel (task pixel, or
    # chips.min_labelled: 0)
    sparse = get_task(cfg.task).labelled_fraction(cfg.chips.labelled_fraction) == 0
    return prepare(cfg.inputs, out, prep=cfg.prepare, sparse=sparse, compute=cfg.compute)


def stage_chips(cfg: RunConfig, out: Path) -> ChipStore:
    scene = PreparedScene.load(out / "prepared")
    return make_chips(scene, cfg.chips, out, compute=cfg.compute, task=get_task(cfg.task))


def stage_train(cfg: RunConfig, out: Path, progress: bool = False, resume: bool = True) -> Path:
    scene = PreparedScene.load(out / "prepared")
    store = ChipStore.load(out / "chips")
    model_cfg = cfg.model
    if scene.temporal:  # temporal models read the date count from the stack (registry encoder `t<dates>`)
        from eoforge.temporal.models import encoder_for_dates

        encoder = encoder_for_dates(model_cfg.arch, model_cfg.encoder, len(scene.temporal["dates"]))
        model_cfg = model_cfg.model_copy(update={"encoder": encoder})
    # resume: continue an interrupted training of the same config from OUT/train/checkpoints/last.ckpt
    task = get_task(cfg.task)
    result = train(store, scene, model_cfg, cfg.train, out, progress=progress, resume=resume, task=task)
    meta = PackageMeta(
        task=task.name,
        arch=model_cfg.arch,
        encoder=model_cfg.encoder,
        encoder_depth=model_cfg.encoder_depth,
        bands=scene.bands,
        mean=scene.mean,
        std=scene.std,
        nodata=scene.nodata,
        nodata_rule=scene.nodata_rule,
        band_descriptions=scene.band_descriptions,
        recipe=scene.recipe,
        chip_size=cfg.chips.size,
        classes=[
            ClassInfo(i, n, c)
            for i, n, c in zip(scene.class_ids, scene.class_names, scene.colors, strict=True)
        ],
        tile=cfg.predict.tile or 2 * cfg.chips.size,
        overlap=cfg.predict.overlap,
        tta=cfg.predict.tta,
        blend=cfg.predict.blend,
    )
    return save_package(out / "model", result.model, meta, cfg.dump())


def map_path(cfg: RunConfig, out: Path) -> Path:
    """The delivered map: ``OUT/map.tif``, or the folder ``OUT/maps`` of ``<scene>.tif`` with inputs.scenes."""
    return out / "maps" if cfg.inputs.scenes else out / "map.tif"


def stage_evaluate(cfg: RunConfig, out: Path, credits: str | None = None) -> dict[str, Any]:
    """Score the delivered map ``OUT/map.tif`` (written by the predict stage) and the baselines; with
    inputs.scenes every ``OUT/maps/<scene>.tif``, per scene and overall."""
    predictor = load_package(out / "model")
    metrics = evaluate(
        predictor,
        ChipStore.load(out / "chips"),
        PreparedScene.load(out / "prepared"),
        map_path(cfg, out),
        out,
        cfg=cfg.evaluate,
        train_log=out / "train" / "metrics.csv",
        credits=credits,
        warnings=config_warnings(cfg),
        config=cfg.dump(),
        window={"tile": cfg.predict.tile or 2 * cfg.chips.size, "overlap": cfg.predict.overlap},
    )
    summary = out / "train" / "summary.json"
    if summary.is_file():  # seed, precision, epochs: what makes the training reproducible
        metrics["training"] = json.loads(summary.read_text())
        write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    add_metrics(out / "model", metrics)
    return metrics


def stage_predict(cfg: RunConfig, out: Path, on_progress: Progress | None = None) -> PredictResult:
    """Predict ``OUT/map.tif``, or with inputs.scenes ``OUT/maps/<scene>.tif`` for every scene (the result of
    the last one is returned)."""
    scene = PreparedScene.load(out / "prepared")
    result: PredictResult | None = None
    for name, part in scene.parts():
        result = predict(
            out / "model",
            part.sources,
            out / "maps" / f"{name}.tif" if name else out / "map.tif",
            on_progress=on_progress,
            options=cfg.predict.options(),
            backend=cfg.predict.backend,
            device=cfg.predict.device,
            compute=cfg.compute,
        )
    if result is None:  # parts() always holds a scene; keeps mypy informed
        raise InputError(f"{out / 'prepared'}: no prepared scene; run `eoforge prepare` first")
    return result


STAGES = ("prepare", "chips", "train", "predict", "evaluate")
_SECTIONS = {  # the config sections each stage's output depends on (earlier stages' through the cascade)
    "prepare": ("inputs", "prepare"),
    "chips": ("inputs", "prepare", "task", "chips"),
    "train": ("inputs", "prepare", "task", "chips", "model", "train"),
    # the package keeps the tile/overlap of the run that trained it (defaults of `eoforge predict`); the run's
    # own map and its evaluation use the current `predict` section, so changing it never retrains
    "predict": ("inputs", "prepare", "task", "chips", "model", "train", "predict"),
    "evaluate": ("inputs", "prepare", "task", "chips", "model", "train", "predict", "evaluate"),
}
_READS = {  # the sections whose file paths a stage reads (fingerprinted in stages.json)
    "prepare": ("inputs", "prepare"),
    "chips": ("chips",),
    "train": ("model", "train"),
    "predict": ("predict",),
    "evaluate": ("evaluate",),
}
_OUTPUTS = {  # what each stage writes under OUT (the first one names the stage's output in messages)
    "prepare": ("prepared/scene.json", "prepared"),
    "chips": ("chips/chips.json", "chips"),
    "train": ("model/eoforge.json", "model", "train"),
    "predict": ("map.tif",),
    "evaluate": ("metrics.json", "report.html", "eval"),
}
STATE = "stages.json"


def stage_hash(cfg: RunConfig, stage: str) -> str:
    """Hash of what a stage's output depends on: the eoforge version and the config sections up to it."""
    dump = cfg.dump()
    payload = {"eoforge": __version__, **{k: dump.get(k) for k in _SECTIONS[stage]}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def stage_inputs(cfg: RunConfig, stage: str) -> dict[str, list[Any]]:
    """Fingerprints of the files a stage reads: every local path (or glob) named in its config sections.

    Keyed by absolute path, as the config names them (the user's files, outside the run folder). A config
    naming a file inside the run folder keeps naming it there when the folder moves: the file is missing
    from the old place then, and the stage runs again (the config is what says where its inputs are).
    """
    dump = cfg.dump()
    return fingerprint(p for k in _READS[stage] for p in paths_in(dump.get(k)))


def _output_names(cfg: RunConfig, stage: str) -> tuple[str, ...]:
    if stage == "predict" and cfg.inputs.scenes:  # one map per scene
        return tuple(f"maps/{s.name}.tif" for s in cfg.inputs.scenes)
    return _OUTPUTS[stage]


def stage_outputs(cfg: RunConfig, out: Path, stage: str, known: Any = None) -> dict[str, list[Any]] | None:
    """Fingerprints of what a stage wrote, keyed by path relative to ``out`` (None when some is missing):
    the same after the run folder was moved or copied. ``known``: the recorded ones, whose hashes are reused
    for files of unchanged size and time (anything else, as an older eoforge's digest string: none)."""
    return tree_fingerprint(out, _output_names(cfg, stage), known if isinstance(known, dict) else None)


def _stale(state: dict[str, dict[str, Any]], cfg: RunConfig, out: Path, stage: str) -> str | None:
    """Why ``stage`` must run again (None when its outputs in ``out`` are up to date).

    Outputs found the same by content but with other modification times (a copy that did not keep them) are
    recorded in ``state`` with their new times, so that the next check does not read them again.
    """
    rec = state.get(stage)
    if rec is None:
        return "not run yet"
    if not (out / _output_names(cfg, stage)[0]).is_file():
        return f"{_output_names(cfg, stage)[0]} is missing"
    if rec["config"] != stage_hash(cfg, stage):
        return "config changed"
    changed = changed_files(rec["inputs"], stage_inputs(cfg, stage))
    if changed:
        return f"input changed: {', '.join(changed[:3])}" + (" …" if len(changed) > 3 else "")
    # not a dict: an output was missing when the stage was recorded, or the record is an older eoforge's
    # digest of absolute paths (the stage then runs again once, wherever the folder is)
    old = rec["outputs"]
    now = stage_outputs(cfg, out, stage, known=old) if isinstance(old, dict) else None
    if now is None or changed_files(old, now):
        return "its outputs were changed or truncated since it ran"
    rec["outputs"] = now
    return None


def _record(state: dict[str, dict[str, Any]], cfg: RunConfig, out: Path, stage: str | None) -> None:
    """Record ``stage`` as finished, drop the stages after it, refresh output digests; write stages.json and
    ``OUT/config.yaml`` (the config of what OUT now holds; a command refused before any stage finished leaves
    both as they were)."""
    save_config(cfg, out)
    if stage is not None:
        state[stage] = {"config": stage_hash(cfg, stage), "inputs": stage_inputs(cfg, stage), "outputs": ""}
        for later in STAGES[STAGES.index(stage) + 1 :]:
            state.pop(later, None)
    for name, rec in state.items():  # later stages may add to earlier outputs (model/metrics.json)
        rec["outputs"] = stage_outputs(cfg, out, name, known=rec["outputs"])
    write_text(out / STATE, json.dumps({s: state[s] for s in STAGES if s in state}, indent=2))


@contextlib.contextmanager
def _output_errors(out: Path) -> Iterator[None]:
    """A full, read-only or over-quota disk met by a library writing in place (Lightning's OUT/train, Zarr):
    one line naming the file (or the run folder) instead of a traceback."""
    try:
        yield
    except OSError as exc:
        if isinstance(exc, EoforgeError) or exc.errno not in OUTPUT_ERRNOS:
            raise
        raise output_error(exc, exc.filename or out) from None


def _run_stage(
    cfg: RunConfig,
    out: Path,
    stage: str,
    progress: bool,
    credits: str | None,
    on_progress: Progress | None,
    resume: bool = True,
) -> Any:
    if stage == "prepare":
        return stage_prepare(cfg, out)
    if stage == "chips":
        return stage_chips(cfg, out)
    if stage == "train":
        check_devices(cfg.train)
        return stage_train(cfg, out, progress=progress, resume=resume)
    if stage == "evaluate":
        return stage_evaluate(cfg, out, credits=credits)
    return stage_predict(cfg, out, on_progress=on_progress)


def _sweep(out: Path) -> None:
    """Housekeeping under the lock: remove what killed runs left (before the space check: it frees space)."""
    removed = sweep_temporaries(out)
    if removed:
        log.info("removed %d temporary file(s) left by an interrupted run", len(removed))


def space_needs(cfg: RunConfig, out: Path, stages: list[str]) -> dict[str, int]:
    """Estimated bytes the large outputs of ``stages`` need in ``out`` (see :mod:`eoforge.io.space`)."""
    if not set(stages) & set(SPACE_WHAT):
        return {}
    # (height, width, channels, time stack) of each scene's prepared stack (a time stack also in stack.zarr)
    shapes: list[tuple[int, int, int, bool]] = []
    if "prepare" in stages:  # the grids and channels the prepared stacks will have
        for _, sub in cfg.inputs.scene_inputs():
            recipe, source = open_prepare_source(sub, cfg.prepare)
            with source:
                shapes.append((source.grid.height, source.grid.width, source.count, bool(recipe.dates)))
    else:
        for _, scene in PreparedScene.load(out / "prepared").parts():
            shapes.append((scene.grid.height, scene.grid.width, len(scene.bands), bool(scene.temporal)))
    total: dict[str, int] = {}
    for h, w, c, dated in shapes:
        sizes = stage_bytes(
            stages, h, w, c, list(cfg.inputs.classes), cfg.chips, cfg.predict, time_stack=dated
        )
        for what, n in sizes.items():
            total[what] = total.get(what, 0) + n
    return total


def _check_space(cfg: RunConfig, out: Path, stages: list[str]) -> None:
    """Refuse before anything is written when the stages' large outputs would not fit in ``out``'s disk."""
    check_free_space(out, space_needs(cfg, out, stages))


def _todo(state: dict[str, dict[str, Any]], cfg: RunConfig, out: Path) -> dict[str, str]:
    """The stages `run` must run, with why: the first stale one and every stage after it."""
    for i, stage in enumerate(STAGES):
        why = _stale(state, cfg, out, stage)
        if why is not None:
            return {stage: why, **{later: "an earlier stage ran" for later in STAGES[i + 1 :]}}
    return {}


def run_stage(
    cfg: RunConfig,
    out: str | Path,
    stage: str,
    progress: bool = False,
    credits: str | None = None,
    on_progress: Progress | None = None,
) -> Any:
    """Run one stage into ``out`` (the ``eoforge STAGE`` commands) under the run lock, and record it.

    The stages before it must be up to date for this config (else a one-line error says which to run); the
    stages after it are marked to re-run.
    """
    if stage not in STAGES:
        raise InputError(f"unknown stage '{stage}'; choose one of: {', '.join(STAGES)}")
    out = check_run_folder(out)
    with run_lock(out):
        _sweep(out)
        state = load_state(out / STATE)
        todo = []
        for before in STAGES[: STAGES.index(stage)]:
            why = _stale(state, cfg, out, before)
            if why is not None and before == "predict":
                # evaluation scores the delivered map: `eoforge evaluate` predicts it first when needed
                todo.append(before)
                continue
            if why is not None:
                first = out / _output_names(cfg, before)[0]
                problem = "not found" if not first.is_file() else f"out of date ({why})"
                raise InputError(f"{first}: {problem}; run `eoforge {before}` first")
        todo.append(stage)
        _check_space(cfg, out, todo)
        result = None
        for name in todo:
            with _output_errors(out):
                result = _run_stage(cfg, out, name, progress, credits, on_progress)
            _record(state, cfg, out, name)
        return result


def run(
    cfg: RunConfig,
    out: str | Path,
    progress: bool = False,
    credits: str | None = None,
    on_stage: Callable[[str, bool], None] | None = None,
    on_progress: Progress | None = None,
    resume: bool = True,
) -> RunResult:
    """Run prepare → chips → train (+ package) → predict → evaluate (scores the map) into ``out``.

    With ``resume`` a stage is skipped when its outputs are those it wrote, from the same config sections
    and the same input files (and every stage before it was skipped too), so an interrupted run continues
    where it stopped. ``OUT/stages.json`` records, per finished stage, the config hash, the fingerprints of
    the files it read and those of its outputs (by path relative to ``out`` and content, so a moved or copied
    run folder is up to date). One process at a time works in ``out`` (a lock).
    """
    out = check_run_folder(out)
    check_devices(cfg.train)
    with run_lock(out):
        _sweep(out)
        state = load_state(out / STATE) if resume else {}
        todo = _todo(state, cfg, out)
        _check_space(cfg, out, list(todo))
        if not todo:  # nothing to run: OUT/config.yaml still follows the latest command, and stages.json
            _record(state, cfg, out, None)  # the outputs' times, when a copy gave them new ones
        metrics: dict[str, Any] | None = None
        for stage in STAGES:
            why = todo.get(stage)
            log.debug("stage %s: %s", stage, why or "up to date")
            if on_stage is not None:
                on_stage(stage, why is None)
            if why is None:
                continue
            if why not in ("not run yet", "an earlier stage ran"):
                log.info("%s runs again: %s", stage, why)
            state.pop(stage, None)
            with _output_errors(out):
                result = _run_stage(cfg, out, stage, progress, credits, on_progress, resume)
            if stage == "evaluate":
                metrics = result
            _record(state, cfg, out, stage)
        if metrics is None:
            metrics = json.loads((out / "metrics.json").read_text())
    return RunResult(out=out, metrics=metrics, map=map_path(cfg, out))
