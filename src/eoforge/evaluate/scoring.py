"""Stage 5, evaluate: score the delivered map on the test pixels, against baselines on the same pixels.

The model is scored through ``OUT/map.tif``, the map that `predict` wrote (same engine, window, overlap and
backend users get), restricted to the test pixels: labelled pixels inside test chips, each counted once.
The random forest, the majority class and the user's own baselines are scored on exactly those pixels.
One streaming pass over the scene by blocks also writes ``OUT/eval/test_pixels.tif`` (reference class id where
scored, nodata elsewhere) and ``OUT/eval/splits.tif`` (1 train, 2 val, 3 test: the split of each pixel's
spatial block), so any other map can be scored on the same pixels. Confusion matrices are kept per test block
for the bootstrap intervals. Writes ``metrics.json`` and ``report.html``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from eoforge.chips import ChipStore
from eoforge.chips.store import iter_chips
from eoforge.config import IGNORE_INDEX, EvaluateConfig, IndexRule, MapBaseline
from eoforge.errors import InputError
from eoforge.evaluate.baselines import (
    ForestScorer,
    IndexRuleScorer,
    MajorityScorer,
    MapScorer,
    Scorer,
    training_pixels,
)
from eoforge.evaluate.metrics import bootstrap_intervals, metrics_from_confusion
from eoforge.evaluate.report import Panel, render_report
from eoforge.evaluate.warnings import band_gap_warnings, conclusion_warnings
from eoforge.io.atomic import atomic_dir, write_text
from eoforge.io.rasters import block_windows
from eoforge.io.state import run_relative
from eoforge.package import Predictor
from eoforge.prepare import PreparedScene

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 1, "val": 2, "test": 3}
NO_PREDICTION = "(no prediction)"


@dataclass
class BlockConfusion:
    """Confusion matrices ``(K+1) x (K+1)`` per spatial test block; index K is 'no prediction'."""

    k: int
    blocks: dict[int, np.ndarray] = field(default_factory=dict)

    def add(self, keys: np.ndarray, ref: np.ndarray, pred: np.ndarray) -> None:
        n = self.k + 1
        uniq, local = np.unique(keys, return_inverse=True)
        flat = np.bincount(local * n * n + ref * n + pred, minlength=len(uniq) * n * n)
        for i, key in enumerate(uniq.tolist()):
            cm = flat[i * n * n : (i + 1) * n * n].reshape(n, n)
            if key in self.blocks:
                self.blocks[key] += cm
            else:
                self.blocks[key] = cm.astype(np.int64)

    def stack(self) -> np.ndarray:
        if not self.blocks:
            return np.zeros((0, self.k + 1, self.k + 1), np.int64)
        return np.stack([self.blocks[k] for k in sorted(self.blocks)])

    def total(self) -> np.ndarray:
        return self.stack().sum(axis=0) if self.blocks else np.zeros((self.k + 1,) * 2, np.int64)


def score(cms: BlockConfusion, names: list[str], ids: list[int], n_boot: int, seed: int) -> dict[str, Any]:
    """Metrics of one scorer; a '(no prediction)' column appears only when the map has holes."""
    total = cms.total()
    k = len(names)
    missing = int(total[:, k].sum())
    if missing:
        m = metrics_from_confusion(total, [*names, NO_PREDICTION], [*ids, -1])
    else:
        m = metrics_from_confusion(total[:k, :k], names, ids)
    m["no_prediction_pixels"] = missing
    m["ci95"] = bootstrap_intervals(cms.stack(), n=n_boot, seed=seed)
    return m


def _chip_table(store: ChipStore, scene: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    idx = store.index()
    if scene is not None:  # the chips of one scene of a many-scene store (row/col are that scene's)
        idx = idx[idx["scene"] == scene]
    rows = idx["row"].to_numpy(np.int64)
    cols = idx["col"].to_numpy(np.int64)
    codes = idx["split"].map(SPLIT_CODES).fillna(0).to_numpy(np.uint8)
    meta = json.loads((store.root / "chips.json").read_text())
    block = int(meta.get("block_size") or 2 * store.size)
    return rows, cols, codes, block


def _block_splits(
    store: ChipStore, grid_shape: tuple[int, int], block: int, scene: str | None = None
) -> np.ndarray | None:
    """Split code of every spatial block (0 where a block holds no chip), or None when blocks do not define
    the splits (random or region splits: the split of a pixel is then that of the chip covering it)."""
    meta = json.loads((store.root / "chips.json").read_text())
    if not meta.get("blocks_define_splits", True):
        return None
    nbr, nbc = -(-grid_shape[0] // block), -(-grid_shape[1] // block)
    table = np.zeros((nbr, nbc), np.uint8)
    named = meta.get("block_splits") if scene is None else meta["scenes"][scene]["block_splits"]
    if named:
        for r, row in enumerate(named[:nbr]):
            for c, name in enumerate(row[:nbc]):
                table[r, c] = SPLIT_CODES.get(name, 0)
        return table
    idx = store.index()
    if scene is not None:
        idx = idx[idx["scene"] == scene]
    if {"block_row", "block_col"} <= set(idx.columns):
        for br, bc, s in zip(idx["block_row"], idx["block_col"], idx["split"], strict=True):
            if 0 <= br < nbr and 0 <= bc < nbc:
                table[int(br), int(bc)] = SPLIT_CODES.get(s, 0)
    return table


def _coverage(win: Window, rows: np.ndarray, cols: np.ndarray, codes: np.ndarray, size: int) -> np.ndarray:
    """Split code of the chip covering each pixel of ``win`` (0: no chip). Splits never overlap."""
    r0, c0, h, w = int(win.row_off), int(win.col_off), int(win.height), int(win.width)
    out = np.zeros((h, w), np.uint8)
    hit = np.flatnonzero((rows < r0 + h) & (rows + size > r0) & (cols < c0 + w) & (cols + size > c0))
    for j in hit:
        rs, cs = max(rows[j] - r0, 0), max(cols[j] - c0, 0)
        out[rs : min(rows[j] + size - r0, h), cs : min(cols[j] + size - c0, w)] = codes[j]
    return out


def build_scorers(
    predictor: Predictor,
    store: ChipStore,
    scene: PreparedScene,
    map_path: Path,
    cfg: EvaluateConfig,
    trained: list[Scorer] | None = None,
) -> list[Scorer]:
    """The delivered map first, then majority class, random forest and the user's baselines. ``trained``:
    the majority and forest scorers of an earlier call (trained on all training chips; reused per scene)."""
    ids = predictor.class_ids
    names = [c.name for c in predictor.meta.classes]
    if trained is None:
        trained = train_baselines(store, names, cfg)
    model = MapScorer(map_path, scene.grid, ids, name=predictor.meta.arch)
    model.kind = "model"
    scorers: list[Scorer] = [model, *trained]
    classes = dict(zip(ids, names, strict=True))
    for b in cfg.baselines:
        if isinstance(b, MapBaseline):
            scorers.append(MapScorer(b.map, scene.grid, ids, name=b.name))
        elif isinstance(b, IndexRule):
            scorers.append(IndexRuleScorer(b, scene.bands, classes))
    return scorers


def train_baselines(store: ChipStore, names: list[str], cfg: EvaluateConfig) -> list[Scorer]:
    """The majority class and (with ``cfg.random_forest``) the random forest, from the training chips."""
    images, labels = store.arrays()
    x, y = training_pixels(images, labels, store.splits["train"], cfg.rf_pixels, cfg.seed)
    if len(y) == 0:
        raise InputError(f"{store.root}: the training chips hold no labelled pixel; re-run chips")
    majority = int(np.bincount(y, minlength=len(names)).argmax())
    out: list[Scorer] = [MajorityScorer(majority, names[majority])]
    if cfg.random_forest:
        out.append(ForestScorer(x, y, seed=cfg.seed))
    return out


def _score_pass(
    scene: PreparedScene,
    store: ChipStore,
    scorers: list[Scorer],
    ids: list[int],
    tmp: Path,
    name: str | None,
    block: int,
) -> tuple[list[BlockConfusion], dict[str, np.ndarray], int, np.ndarray]:
    """One streaming pass over ``scene`` by blocks: confusion matrices of every scorer per test block, labelled
    pixels per split, and ``tmp/test_pixels.tif`` + ``tmp/splits.tif``. ``name``: the scene of a many-scene
    store (its chips only). Last, ``[[pixels, correct] on a band gap, [pixels, correct] elsewhere]`` of the
    delivered map's test pixels, where the scene has band gaps (a band nodata at a valid pixel), else zeros."""
    k = len(ids)
    grid = scene.grid
    rows, cols, codes, block_size = _chip_table(store, name)
    block_split = _block_splits(store, grid.shape, block_size, name)
    nbc = -(-grid.width // block_size)
    cms = [BlockConfusion(k) for _ in scorers]
    split_counts = {s: np.zeros(k, np.int64) for s in SPLIT_CODES}
    needs_pixels = any(s.needs_pixels for s in scorers)
    gaps = np.zeros((2, 2), np.int64)
    track_gaps = bool(scene.band_gaps)
    dtype, nodata = ("uint8", 255) if max(ids) < 255 else ("uint16", 65535)
    id_of = np.asarray(ids, dtype=dtype)
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": 1,
        "crs": grid.crs,
        "transform": grid.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
    }
    with (
        rasterio.open(scene.labels) as lab_src,
        rasterio.open(scene.image) as img_src,
        rasterio.open(tmp / "test_pixels.tif", "w", dtype=dtype, nodata=nodata, **profile) as tp,
        rasterio.open(tmp / "splits.tif", "w", dtype="uint8", nodata=0, **profile) as sp,
    ):
        tp.descriptions = ("reference class id of the scored test pixels",)
        sp.descriptions = (
            "split of the pixel's spatial block (of its chip for random/region splits): 1 train, 2 val, 3 test",
        )
        for win in block_windows(grid, block):
            lab = lab_src.read(1, window=win)
            cover = _coverage(win, rows, cols, codes, store.size)
            r = np.arange(int(win.row_off), int(win.row_off + win.height)) // block_size
            c = np.arange(int(win.col_off), int(win.col_off + win.width)) // block_size
            by_block = cover if block_split is None else block_split[r[:, None], c[None, :]]
            sp.write(by_block, 1, window=win)
            labelled = lab != IGNORE_INDEX
            for s, code in SPLIT_CODES.items():
                sel = lab[(cover == code) & labelled]
                split_counts[s] += np.bincount(sel, minlength=k)[:k]
            test = (cover == SPLIT_CODES["test"]) & labelled
            tp.write(np.where(test, id_of[np.minimum(lab, k - 1)], nodata).astype(dtype), 1, window=win)
            if not test.any():
                continue
            ref = lab[test].astype(np.int64)
            keys = (r[:, None] * nbc + c[None, :])[test]
            pixels = img_src.read(window=win)[:, test].T if needs_pixels or track_gaps else None
            for i, (scorer, cm) in enumerate(zip(scorers, cms, strict=True)):
                pred = scorer.predict(win, test, pixels)
                cm.add(keys, ref, pred)
                if i == 0 and track_gaps and pixels is not None:
                    on_gap = np.isnan(pixels).any(axis=1)
                    right = np.asarray(pred) == ref
                    gaps += [
                        [on_gap.sum(), (right & on_gap).sum()],
                        [(~on_gap).sum(), (right & ~on_gap).sum()],
                    ]
    return cms, split_counts, block_size, gaps


def _close(scorers: list[Scorer]) -> None:
    for scorer in scorers:
        close = getattr(scorer, "close", None)
        if close is not None:
            close()


def evaluate(
    predictor: Predictor,
    store: ChipStore,
    scene: PreparedScene,
    map_path: str | Path,
    out_dir: str | Path,
    cfg: EvaluateConfig | None = None,
    train_log: str | Path | None = None,
    credits: str | None = None,
    warnings: list[tuple[str, str]] | None = None,
    config: dict[str, Any] | None = None,
    window: dict[str, int] | None = None,
    block: int = 512,
) -> dict[str, Any]:
    """Score ``map_path`` (and the baselines) on the test pixels; write eval rasters, metrics and report.

    ``window`` (``tile``, ``overlap``) says how the map was predicted, for the report (default: the package's).
    """
    cfg = cfg or EvaluateConfig()
    out_dir = Path(out_dir)
    map_path = Path(map_path)
    if not map_path.is_file() and not (scene.scenes and map_path.is_dir()):
        raise InputError(
            f"{map_path}: the map to score does not exist; run `eoforge predict` (or `run`) first"
        )
    names = [c.name for c in predictor.meta.classes]
    ids = predictor.class_ids
    k = len(names)
    if not store.splits.get("test"):
        raise InputError(
            f"{store.root}: the chip store has no test chips; set chips.split.test > 0 and re-run chips"
        )
    # (name, scene, map) per scene: one unnamed scene, or every scene of a many-scene run (maps/<name>.tif)
    parts: list[tuple[str | None, PreparedScene, Path]] = (
        [(None, scene, map_path)]
        if not scene.scenes
        else [(n, p, map_path / f"{n}.tif" if map_path.is_dir() else map_path) for n, p in scene.parts()]
    )
    trained = train_baselines(store, names, cfg)
    per_scene: list[tuple[list[BlockConfusion], dict[str, np.ndarray]]] = []
    gaps = np.zeros((2, 2), np.int64)
    with atomic_dir(out_dir / "eval") as tmp:
        for name, part, part_map in parts:
            if not part_map.is_file():
                raise InputError(
                    f"{part_map}: the map of scene {name} does not exist; run `eoforge predict` first"
                )
            scorers = build_scorers(predictor, store, part, part_map, cfg, trained)
            where = tmp if name is None else tmp / name
            where.mkdir(exist_ok=True)
            try:
                scene_cms, counts, block_size, part_gaps = _score_pass(
                    part, store, scorers, ids, where, name, block
                )
            finally:
                _close(scorers)
            per_scene.append((scene_cms, counts))
            gaps += part_gaps
    cms = [BlockConfusion(k) for _ in per_scene[0][0]]
    for i, (scene_cms, _) in enumerate(per_scene):  # block keys made unique across scenes for the bootstrap
        for total, cm in zip(cms, scene_cms, strict=True):
            for key, m in cm.blocks.items():
                total.blocks[(i << 40) + key] = m.copy()
    split_counts = {s: np.sum([c[s] for _, c in per_scene], axis=0) for s in SPLIT_CODES}
    if not cms[0].blocks:
        raise InputError(f"{store.root}: the test chips hold no labelled pixel; re-run chips")
    metrics = score(cms[0], names, ids, cfg.bootstrap, cfg.seed)
    metrics["model"] = {"arch": predictor.meta.arch, "encoder": predictor.meta.encoder}
    metrics["scored_map"] = run_relative(map_path, out_dir)  # "map.tif": true wherever the folder goes
    metrics["map_window"] = window or {"tile": predictor.meta.tile, "overlap": predictor.meta.overlap}
    metrics["split"] = "test"
    metrics["test_chips"] = len(store.splits["test"])
    metrics["test_blocks"] = len(cms[0].blocks)
    metrics["block_size"] = block_size
    metrics["chips"] = {s: len(v) for s, v in store.splits.items()}
    metrics["class_pixels"] = {
        s: dict(zip(names, (int(x) for x in v), strict=True)) for s, v in split_counts.items()
    }
    metrics["bootstrap"] = {"resamples": cfg.bootstrap, "unit": "spatial test block", "seed": cfg.seed}
    if gaps[0, 0]:  # test pixels where a band was missing (filled with its mean): how the map does there
        n_gap, n_rest = int(gaps[0, 0]), int(gaps[1, 0])
        metrics["band_gaps"] = {
            "test_pixels_on_gaps": n_gap,
            "share_of_test_pixels": n_gap / (n_gap + n_rest),
            "overall_accuracy_on_gaps": float(gaps[0, 1] / n_gap),
            "overall_accuracy_elsewhere": float(gaps[1, 1] / n_rest) if n_rest else None,
        }
    baselines = []
    for scorer, cm in zip(scorers[1:], cms[1:], strict=True):
        baselines.append(
            {"name": scorer.name, "kind": scorer.kind, **score(cm, names, ids, cfg.bootstrap, cfg.seed)}
        )
    metrics["baselines"] = baselines
    if scene.scenes:  # the same scores per scene; their confusion matrices sum to the overall one
        metrics["scenes"] = {
            str(name): {
                "map": run_relative(part_map, out_dir),
                "test_blocks": len(scene_cms[0].blocks),
                **score(scene_cms[0], names, ids, cfg.bootstrap, cfg.seed),
                "baselines": [
                    {"name": sc.name, "kind": sc.kind, **score(cm, names, ids, cfg.bootstrap, cfg.seed)}
                    for sc, cm in zip(scorers[1:], scene_cms[1:], strict=True)
                ],
            }
            for (name, _, part_map), (scene_cms, _) in zip(parts, per_scene, strict=True)
        }
        for (name, part, _), (_, counts) in zip(parts, per_scene, strict=True):
            m = metrics["scenes"][str(name)]
            m["class_pixels"] = {s: dict(zip(names, map(int, v), strict=True)) for s, v in counts.items()}
            m["model"] = metrics["model"]
            lost_part = dict(zip(names, part.lost_to_nodata, strict=True)) if part.lost_to_nodata else None
            m["warnings"] = [  # the same checks on the scene alone (its test pixels, blocks and classes)
                {"code": c, "message": f"scene {name}: {msg}"}
                for c, msg in conclusion_warnings(
                    m,
                    dict(zip(names, part.class_counts, strict=True)),
                    lost_part,
                    band_gap_warnings(part.band_gaps),
                )
            ]
    rf = next((b for b in baselines if b["kind"] == "random_forest"), None)
    if rf is not None:
        metrics["baseline"] = rf  # the README's and earlier versions' key for the random forest
    if scene.label_facts is not None:  # what prepare found in the labels (dropped rows, repaired polygons)
        metrics["label_facts"] = scene.label_facts
    lost_counts = scene.lost_to_nodata
    lost = dict(zip(names, lost_counts, strict=True)) if lost_counts else None
    metrics["warnings"] = [
        {"code": c, "message": m}
        for c, m in conclusion_warnings(
            metrics,
            dict(zip(names, scene.class_counts, strict=True)),
            lost,
            [*band_gap_warnings(scene.band_gaps, metrics.get("band_gaps")), *(warnings or [])],
        )
    ]
    panels = [p for n, part, pm in parts for p in _panels(store, part, pm, ids, 1 if n else 2, n)]
    figures = _insights(predictor, store, parts[0][1], names, cfg, metrics, [(n, p) for n, p, _ in parts])
    metrics_text = json.dumps(metrics, indent=2)
    write_text(out_dir / "metrics.json", metrics_text)
    write_text(
        out_dir / "report.html",
        render_report(metrics, predictor, panels, train_log, credits, config, figures=figures),
    )
    for w in metrics["warnings"]:
        log.warning("%s", w["message"])
    return metrics


def _insights(
    predictor: Predictor,
    store: ChipStore,
    scene: PreparedScene,
    names: list[str],
    cfg: EvaluateConfig,
    metrics: dict[str, Any],
    scenes: list[tuple[str | None, PreparedScene]] | None = None,
) -> dict[str, str]:
    """What the report shows beyond the scores: chip footprints and class histograms per split, and, from the
    model's probabilities on the first ``cfg.insight_chips`` test chips, ROC/PR curves, calibration and the
    permutation band importance (also stored in ``metrics``: ``curves``, ``band_importance``)."""
    import base64

    from eoforge.chips.plots import class_histogram_png, scenes_footprint_png
    from eoforge.evaluate.curves import curves_on_chips, plot_pr, plot_reliability, plot_roc
    from eoforge.evaluate.explain import band_importance
    from eoforge.evaluate.report import importance_png

    def b64(png: bytes) -> str:
        return base64.b64encode(png).decode()

    figures = {
        "footprints": b64(scenes_footprint_png(store, scenes or [("", scene)])),
        "histograms": b64(class_histogram_png(store, names)),
    }
    chips = sorted(store.splits["test"])[: cfg.insight_chips]
    if not chips:
        return figures
    read = list(iter_chips(*store.arrays(), chips))  # sorted chips, each chunk read once
    x = np.stack([img for _, img, _ in read]).astype(np.float32)
    y = np.stack([lab for _, _, lab in read])
    acc = curves_on_chips(predictor, x, y)
    metrics["curves"] = {"test_chips": len(chips), **acc.to_json(names)}
    colors = [c.color for c in predictor.meta.classes]
    figures["roc"] = b64(plot_roc(acc.roc(), names, colors))
    figures["pr"] = b64(plot_pr(acc.pr(), names, colors))
    figures["reliability"] = b64(plot_reliability(acc.calibration()))
    importance = band_importance(predictor, x, y, seed=cfg.seed)
    metrics["band_importance"] = {"test_chips": len(chips), "miou_drop": importance}
    figures["importance"] = importance_png(importance)
    return figures


def _panels(
    store: ChipStore,
    scene: PreparedScene,
    map_path: Path,
    ids: list[int],
    n: int = 2,
    name: str | None = None,
) -> list[Panel]:
    """Image, reference and delivered-map windows of the ``n`` best and ``n`` worst test chips (by the share of
    their labelled pixels the map gets right; chips with at least 100 labelled pixels, up to 500 chips read)."""
    idx = store.index()
    if name is not None:
        idx = idx[idx["scene"] == name]
    test = idx[idx["split"] == "test"].sort_values(["row", "col"]).head(500)
    if test.empty:
        return []
    lut = np.full(65536, IGNORE_INDEX, dtype=np.uint8)
    lut[np.asarray(ids)] = np.arange(len(ids))
    scored: list[tuple[float, Window, np.ndarray, np.ndarray]] = []
    with rasterio.open(scene.labels) as lab, rasterio.open(map_path) as mp:
        for row, col in zip(test["row"], test["col"], strict=True):
            w = Window(int(col), int(row), store.size, store.size)
            ref = lab.read(1, window=w)
            pred = mp.read(1, window=w, masked=True)
            pred_idx = np.where(
                np.ma.getmaskarray(pred), IGNORE_INDEX, lut[np.asarray(pred.filled(0), np.int64)]
            )
            labelled = ref != IGNORE_INDEX
            if labelled.sum() >= 100:
                scored.append((float((pred_idx[labelled] == ref[labelled]).mean()), w, ref, pred_idx))
    scored.sort(key=lambda t: t[0])
    picks = [("worst", t) for t in scored[:n]] + [
        ("best", t) for t in scored[::-1][:n] if t not in scored[:n]
    ]
    out = []
    with rasterio.open(scene.image) as img:
        for kind, (acc, w, ref, pred_idx) in picks:
            title = f"{kind} (agreement {acc:.2f}, {f'scene {name}, ' if name else ''}row {int(w.row_off)} col {int(w.col_off)})"
            out.append(Panel(img.read(window=w), ref, pred_idx, title))
    return out
