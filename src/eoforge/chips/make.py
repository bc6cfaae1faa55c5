"""Stage 2, chips: sample chip windows, filter them, split them, extract them with Dask, check for leakage."""

from __future__ import annotations

import json
import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
from shapely import box as boxes

from eoforge.chips.leakage import check_across_scenes, check_leakage
from eoforge.chips.samplers import balance, grid_windows, random_windows
from eoforge.chips.splits import (
    SPLITS,
    assign_blocks,
    centre_blocks,
    split_blocks,
    split_random,
    split_regions,
)
from eoforge.chips.store import ChipStore, chips_per_chunk, consolidate, create_chip_arrays, write_coords
from eoforge.chips.tasks import batches, extract, local_threads, run_tasks, window_stats
from eoforge.compute import tasks_per_call, worker_threads
from eoforge.config import IGNORE_INDEX, ChipsConfig, ComputeConfig, SplitConfig
from eoforge.errors import InputError
from eoforge.io.atomic import atomic_dir
from eoforge.io.blockcache import tile_rows_bytes
from eoforge.io.state import run_relative
from eoforge.prepare import PreparedScene

if TYPE_CHECKING:
    from distributed import Client

    from eoforge.tasks import Task

log = logging.getLogger(__name__)

STRIP = 256
"""Rows of the scene per Dask task (the prepared rasters' tile height): chips whose top row falls in one strip."""
MAX_PER_TASK = 256
"""At most this many chips per statistics read batch (bounds a task's memory: one batch's box is held at once)."""
CHUNKS_PER_TASK = 4
"""Zarr chunks per extraction task at most (``CHUNKS_PER_TASK`` x :func:`chips_per_chunk` chips; one chunk is
held at once); fewer with several threads or workers (:func:`eoforge.compute.tasks_per_call`)."""
CACHE_TILE_ROWS = 2
"""Rows of tiles (:data:`STRIP` px) of GDAL block cache per task: a task reads row-major, a read box may span
two tile rows, so each tile is decoded once while older blocks' memory is recycled (GDAL's default cap keeps
a whole scene of decoded tiles: fresh memory, page faults)."""
TASKS_PER_THREAD = 2
"""Extraction tasks per worker thread of a cluster at least, when there are chunks enough, so the last tasks
finish close together. Not more: each task opens the rasters and decompresses the tiles it shares with its
neighbours again (4 per thread cost 19 % more CPU at 1536² for no better balance)."""
LOCAL_TASKS_PER_THREAD = 1
"""Extraction tasks per thread in this process: the chunks split evenly, one run per thread. A task's buffers
and GDAL blocks are recycled chunk after chunk (a task holds one chunk at once however many it writes), but
each new task fills them afresh: new pages in its thread's malloc arena (page faults, kernel zeroing) and the
tiles it shares with its neighbours decoded again. 4096², 2 idle cores: 1.0 s vs 1.17 s with 16 tasks of 4
chunks (docs/PERFORMANCE.md, Chips, fourth round)."""


def _stats_runs(rows: np.ndarray, client: Client | None) -> list[tuple[int, int]]:
    """``[a, b)`` chips per statistics task: runs of consecutive :func:`batches` with about as many chips each,
    one per thread in this process, :data:`TASKS_PER_THREAD` per worker thread on a cluster (fewer raster
    opens, first fills of the block cache and scheduler round trips; each task still reads batch by batch)."""
    runs = batches(rows, STRIP, MAX_PER_TASK)
    if not runs:
        return runs
    parts = local_threads() if client is None else TASKS_PER_THREAD * worker_threads(client)
    group = [a * parts // len(rows) for a, _ in runs]  # non-decreasing: runs are in order
    return [
        (runs[group.index(g)][0], runs[len(group) - 1 - group[::-1].index(g)][1]) for g in sorted(set(group))
    ]


def _stats(
    scene: PreparedScene, rows: np.ndarray, cols: np.ndarray, cfg: ChipsConfig, client: Client | None
) -> tuple[np.ndarray, np.ndarray]:
    """Valid and per-class labelled pixels of chips sorted by (row, col)."""
    k = len(scene.class_ids)
    need_valid = cfg.min_valid > cfg.labelled_fraction
    per_px = 1 + (4 * len(scene.bands) if need_valid else 0)  # uint8 labels (+ float32 bands)
    cache = tile_rows_bytes(scene.grid.width, per_px, STRIP, CACHE_TILE_ROWS)
    args = [
        (
            str(scene.image),
            str(scene.labels),
            rows[a:b],
            cols[a:b],
            cfg.size,
            k,
            need_valid,
            cache,
            STRIP,
            MAX_PER_TASK,
        )
        for a, b in _stats_runs(rows, client)
    ]
    res = run_tasks(window_stats, args, client)
    if not res:
        return np.zeros(0, dtype=np.int64), np.zeros((0, k), dtype=np.int64)
    return np.concatenate([r[0] for r in res]), np.concatenate([r[1] for r in res])


def _keep(valid: np.ndarray, counts: np.ndarray, size: int, cfg: ChipsConfig) -> np.ndarray:
    area = size * size
    labelled = counts.sum(
        axis=1
    )  # labelled pixels are valid: valid is -1 (unread) when min_labelled implies it
    enough = (valid < 0) | (valid >= cfg.min_valid * area)
    return enough & (labelled > 0) & (labelled >= cfg.labelled_fraction * area)


def sample(
    scene: PreparedScene, cfg: ChipsConfig, client: Client | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Chip corners (rows, cols) chosen by ``cfg.sampler`` that pass the filters, in row-major order, with
    their labelled pixels per class, a mask of the sampler's chips (the rest: the balanced sampler's denser
    pool of candidates, see :func:`choose_balanced`) and facts for ``chips.json``."""
    size, stride = cfg.size, cfg.stride or cfg.size
    h, w = scene.grid.height, scene.grid.width
    facts: dict[str, Any] = {}
    if cfg.sampler == "random":
        rng = np.random.default_rng(cfg.seed)
        want = int(cfg.count or 0)
        seen: set[tuple[int, int]] = set()
        rows_l: list[int] = []
        cols_l: list[int] = []
        cnt_l: list[np.ndarray] = []
        for _ in range(10):  # draw again for the chips the filters dropped; seeded, so reproducible
            need = want - len(rows_l)
            if need <= 0:
                break
            r, c = random_windows(h, w, size, 2 * need, rng)
            fresh = [(int(a), int(b)) for a, b in zip(r, c, strict=True) if (int(a), int(b)) not in seen]
            fresh = list(dict.fromkeys(fresh))
            seen.update(fresh)
            if not fresh:
                continue
            fr, fc = np.array([p[0] for p in fresh]), np.array([p[1] for p in fresh])
            by_pos = np.lexsort((fc, fr))
            valid, counts = (
                np.empty(len(fr), dtype=np.int64),
                np.empty((len(fr), len(scene.class_ids)), np.int64),
            )
            valid[by_pos], counts[by_pos] = _stats(scene, fr[by_pos], fc[by_pos], cfg, client)
            ok = np.flatnonzero(_keep(valid, counts, size, cfg))[:need]  # the first passing, in draw order
            rows_l.extend(fr[ok].tolist())
            cols_l.extend(fc[ok].tolist())
            cnt_l.extend(counts[ok])
        if len(rows_l) < want:
            log.warning("chips.sampler random: found %d of %d chips passing the filters", len(rows_l), want)
        rows, cols = np.asarray(rows_l, dtype=np.int64), np.asarray(cols_l, dtype=np.int64)
        counts = np.asarray(cnt_l, dtype=np.int64).reshape(len(rows_l), len(scene.class_ids))
        order = np.lexsort((cols, rows))
        return rows[order], cols[order], counts[order], np.ones(len(rows), dtype=bool), facts
    rows, cols = grid_windows(h, w, size, stride)
    base = np.ones(len(rows), dtype=bool)
    if cfg.sampler == "balanced":  # a denser pool of candidates to add from
        pool_stride = max(4, min(stride, size) // 4)
        pr, pc = grid_windows(h, w, size, pool_stride)
        grid_set = set(zip(rows.tolist(), cols.tolist(), strict=True))
        extra = np.array([(a, b) not in grid_set for a, b in zip(pr.tolist(), pc.tolist(), strict=True)])
        rows, cols = np.concatenate([rows, pr[extra]]), np.concatenate([cols, pc[extra]])
        base = np.r_[base, np.zeros(int(extra.sum()), dtype=bool)]
        order = np.lexsort((cols, rows))
        rows, cols, base = rows[order], cols[order], base[order]
    valid, counts = _stats(scene, rows, cols, cfg, client)
    ok = _keep(valid, counts, size, cfg)
    rows, cols, counts, base = rows[ok], cols[ok], counts[ok], base[ok]
    return rows, cols, counts, base, facts


def choose_balanced(
    base: np.ndarray, counts: np.ndarray, eligible: np.ndarray, cfg: ChipsConfig, names: list[str]
) -> tuple[np.ndarray, dict[str, Any]]:
    """Balance the ``eligible`` chips (the train split) with :func:`balance`, starting from the grid chips
    among them; other chips are untouched (grid chips kept, pool chips dropped). Returns the kept mask."""
    start = base & eligible
    sub = np.where(eligible[:, None], counts, 0)
    before = sub[start].sum(axis=0) / max(int(sub[start].sum()), 1)
    chosen, share = balance(start, sub, cfg.balance.min_share)
    facts = {
        "added_chips": int((chosen & ~start).sum()),
        "removed_chips": int((start & ~chosen).sum()),
        "share_before": {n: float(x) for n, x in zip(names, before, strict=True)},
        "share_after": {n: float(x) for n, x in zip(names, share, strict=True)},
    }
    low = [
        n
        for n, x, p in zip(names, share, sub.sum(axis=0), strict=True)
        if p > 0 and x < cfg.balance.min_share
    ]
    if low:
        log.warning(
            "chips.balance: %s stay below %.0f%% of the labelled training pixels (no chip left to add or remove)",
            ", ".join(low),
            100 * cfg.balance.min_share,
        )
    return chosen | (base & ~eligible), facts


def make_chips(
    scene: PreparedScene,
    cfg: ChipsConfig,
    out_dir: str | Path,
    compute: ComputeConfig | None = None,
    task: Task | None = None,
) -> ChipStore:
    """Cut, filter, split and store chips from a prepared scene into ``out_dir/chips``; Dask runs the reads
    on the scheduler ``compute`` names (in this process by default). The ``task`` (default: segmentation)
    says how many labelled pixels a chip needs (sparse labels: one)."""
    from eoforge.compute import dask_client

    if task is not None:
        cfg = cfg.model_copy(update={"min_labelled": task.labelled_fraction(cfg.labelled_fraction)})

    with dask_client(compute) as client:
        return make_chips_on(scene, cfg, Path(out_dir), client)


@dataclass(frozen=True)
class _Picked:
    """One scene's chips after sampling, splitting and balancing (row-major), and what chips.json says."""

    rows: np.ndarray
    cols: np.ndarray
    counts: np.ndarray
    codes: np.ndarray
    block_splits: np.ndarray | None
    dropped: int
    facts: dict[str, Any]


def _split_scene(
    scene: PreparedScene,
    cfg: ChipsConfig,
    sampled: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]],
    block: int,
    whole: int | None,
) -> _Picked:
    """Split one scene's sampled chips by ``cfg.split`` (or give them all the split code ``whole``: split by
    scene), balance the training chips, drop the chips the split or balancing left out."""
    size, sp, grid = cfg.size, cfg.split, scene.grid
    rows, cols, counts, base, facts = sampled
    facts = dict(facts)
    names = scene.class_names
    if cfg.sampler == "balanced" and sp.mode == "random":  # balance everything, then draw the splits
        keep, facts["balance"] = choose_balanced(base, counts, np.ones(len(rows), dtype=bool), cfg, names)
        rows, cols, counts, base = rows[keep], cols[keep], counts[keep], base[keep]
    block_splits = None
    if whole is not None:  # the scene goes whole to one split: its blocks are all of that split
        codes = np.full(len(rows), whole, dtype=np.int8)
        block_splits = np.full(
            (math.ceil(grid.height / block), math.ceil(grid.width / block)), whole, np.int8
        )
    elif sp.mode == "blocks":
        codes, block_splits = split_blocks(
            rows,
            cols,
            size,
            grid.shape,
            block,
            sp.buffer,
            sp.val,
            sp.test,
            sp.seed,
            counts=counts if sp.stratify else None,
        )
    elif sp.mode == "random":
        codes = split_random(rows, cols, size, sp.buffer, sp.val, sp.test, sp.seed)
    else:
        if sp.regions is None:  # the config validator guarantees it; keeps mypy informed
            raise InputError("chips.split.mode regions needs chips.split.regions")
        codes = split_regions(rows, cols, size, grid, sp.buffer, sp.regions.path, sp.regions.column)
    if cfg.sampler == "balanced" and sp.mode != "random":  # split first, then balance the training chips
        keep, facts["balance"] = choose_balanced(base, counts, codes == 0, cfg, names)
        dropped_pool = ~base & ~keep
        rows, cols, counts, codes, base = (x[~dropped_pool] for x in (rows, cols, counts, codes, base))
        codes[~keep[~dropped_pool]] = -1
    codes[~base & (codes != 0)] = -1  # pool chips only ever join the training split
    dropped = int((codes < 0).sum())
    kept = codes >= 0
    return _Picked(rows[kept], cols[kept], counts[kept], codes[kept], block_splits, dropped, facts)


def _scene_splits(weights: np.ndarray, names: list[str], sp: SplitConfig) -> np.ndarray:
    """Split code of every scene for ``split.by: scene``: scenes drawn like blocks, weighted by their chips;
    every split with a fraction > 0 must get a scene."""
    codes = assign_blocks(weights[None, :], sp.val, sp.test, sp.seed)[0]
    wanted = {"train": 1.0, "val": sp.val, "test": sp.test}
    for k, s in enumerate(SPLITS):
        if wanted[s] > 0 and not (codes == k).any():
            drawn = ", ".join(f"{n}: {SPLITS[int(c)]}" for n, c in zip(names, codes, strict=True))
            raise InputError(
                f"chips.split.by scene: no scene goes to '{s}' ({drawn}); give at least one scene per split "
                "(more scenes) or use chips.split.by: block"
            )
    return codes


def make_chips_on(scene: PreparedScene, cfg: ChipsConfig, out_dir: Path, client: Client | None) -> ChipStore:
    """:func:`make_chips` on a given Dask client (``None``: in this process), e.g. one already started.

    With several prepared scenes (``inputs.scenes``) every scene is sampled and split on its own (by blocks
    within it, or whole with ``split.by: scene``) and all chips go into one store, scene after scene; the
    index's ``scene`` column names each chip's scene and the leakage check runs within each scene (pixel
    offsets) and across scenes (footprints that overlap on the ground)."""
    size, sp = cfg.size, cfg.split
    block = sp.block_size or 2 * size
    parts = scene.parts()
    multi = scene.scenes is not None
    if block < size:
        raise InputError(
            f"chips.split.block_size ({block}) is smaller than chips.size ({size}); make it at least the chip size"
        )
    for _, part in parts:
        if part.grid.height < size or part.grid.width < size:
            raise InputError(
                f"{part.image}: scene ({part.grid.width}x{part.grid.height} px) is smaller than one chip "
                f"({size} px); lower chips.size"
            )
    sampled = [sample(part, cfg, client) for _, part in parts]
    for (_, part), smp in zip(parts, sampled, strict=True):
        if len(smp[0]) == 0:
            raise InputError(
                f"{part.labels}: no chip has {cfg.min_valid:.0%} valid and {cfg.labelled_fraction:.0%} labelled "
                "pixels; lower chips.min_valid, chips.min_labelled or chips.size"
            )
    whole: list[int | None] = [None] * len(parts)
    if multi and sp.by == "scene":
        weights = np.array([int(smp[3].sum()) for smp in sampled], dtype=np.int64)
        whole = [int(c) for c in _scene_splits(weights, [n for n, _ in parts], sp)]
    picked = [
        _split_scene(part, cfg, smp, block, w)
        for (_, part), smp, w in zip(parts, sampled, whole, strict=True)
    ]
    rows = np.concatenate([p.rows for p in picked])
    cols = np.concatenate([p.cols for p in picked])
    counts = np.concatenate([p.counts for p in picked])
    codes = np.concatenate([p.codes for p in picked])
    sid = np.concatenate([np.full(len(p.rows), i, dtype=np.int64) for i, p in enumerate(picked)])
    dropped = sum(p.dropped for p in picked)
    facts: dict[str, Any] = dict(picked[0].facts) if not multi else {}
    wanted = {"train": 1.0, "val": sp.val, "test": sp.test}
    for k, s in enumerate(SPLITS):
        if (sp.mode == "regions" or wanted[s] > 0) and not (codes == k).any():
            hint = (
                f"the regions in {sp.regions.path if sp.regions else ''} give no chip to '{s}'; add {s} regions"
                if sp.mode == "regions"
                else f"too few for a '{s}' split; lower chips.split.block_size or chips.size"
            )
            grid = parts[0][1].grid
            if sp.mode == "blocks" and not multi:
                hint = f"only {math.ceil(grid.height / block) * math.ceil(grid.width / block)} spatial block(s) of {block} px, {hint}"
            if s == "train" or sp.mode != "regions":
                where = scene.image if not multi else f"{scene.root} ({len(parts)} scenes)"
                raise InputError(f"{where}: {hint}")
    n = len(rows)
    br, bc = centre_blocks(rows, cols, size, block)
    split_names = np.asarray(SPLITS, dtype=object)[codes]
    names = scene.class_names
    grids = [part.grid for _, part in parts]
    # pixel positions of the point sample: scenes stacked one under the other (keys unique across scenes)
    offsets = np.cumsum([0] + [g.height for g in grids[:-1]]).astype(np.int64)
    width = max(g.width for g in grids)
    with atomic_dir(out_dir / "chips") as tmp:
        attrs = {
            "crs": grids[0].crs,
            "transform": list(grids[0].transform)[:6],
            "bands": scene.bands,
            "classes": dict(zip(map(str, scene.class_ids), names, strict=True)),
            "ignore_index": IGNORE_INDEX,
            "chip_size": size,
            **({"scenes": [nm for nm, _ in parts]} if multi else {}),
            **({"dates": scene.temporal["dates"]} if scene.temporal else {}),
        }
        create_chip_arrays(tmp / "chips.zarr", grids, scene.bands, size, n, attrs)
        pts = (cfg.points.per_class, cfg.points.seed) if cfg.points is not None else None
        images = [str(part.image) for _, part in parts]
        labels = [str(part.labels) for _, part in parts]
        chunk = chips_per_chunk(len(scene.bands), size)  # as create_chip_arrays laid them out
        n_chunks = -(-n // chunk)
        cache = tile_rows_bytes(width, 1 + 4 * len(scene.bands), STRIP, CACHE_TILE_ROWS)
        per_task = (  # chunks per task: ~2 tasks per cluster thread, so no thread idles long at the end
            tasks_per_call(n_chunks, CHUNKS_PER_TASK, client, per_thread=TASKS_PER_THREAD)
            if client is not None
            else max(1, -(-n_chunks // (LOCAL_TASKS_PER_THREAD * local_threads())))
        )
        args = [
            (
                *(images, labels, str(tmp / "chips.zarr"), a),
                *(rows[a:b], cols[a:b], codes[a:b], sid[a:b], size, width, offsets, pts, chunk, cache),
                client is None,  # overlap reads and writes: this process owns the machine
            )
            # whole chunks, so no file is written by two tasks; several per task, so most tiles of the
            # prepared rasters are decompressed once
            for a, b in batches(np.arange(n), chunk * per_task, chunk * per_task)
        ]

        def side() -> None:
            """What needs no chip pixels: per-chip coordinates, the GeoParquet index, the leakage check."""
            write_coords(
                tmp / "chips.zarr", grids, scene.bands, size, rows, cols, codes, sid if multi else None
            )
            tr = np.array([list(g.transform)[:6] for g in grids])[sid]
            x0, y0 = tr[:, 2] + cols * tr[:, 0], tr[:, 5] + rows * tr[:, 4]
            x1, y1 = x0 + size * tr[:, 0], y0 + size * tr[:, 4]
            # one scene: its prepared image, relative to the run folder (the same after a move)
            scene_col = (
                np.asarray([nm for nm, _ in parts], dtype=object)[sid]
                if multi
                else run_relative(scene.image, out_dir)
            )
            index = gpd.GeoDataFrame(
                {
                    "chip": np.arange(n),
                    "split": split_names,
                    "row": rows,
                    "col": cols,
                    "block_row": br,
                    "block_col": bc,
                    "scene": scene_col,
                    **{f"px_{name}": counts[:, i] for i, name in enumerate(names)},
                },
                geometry=boxes(
                    np.minimum(x0, x1), np.minimum(y0, y1), np.maximum(x0, x1), np.maximum(y0, y1)
                ),
                crs=grids[0].crs,
            )
            index.to_parquet(tmp / "index.parquet")
            for i, (nm, _) in enumerate(parts):  # pixel offsets are comparable within one scene only
                sel = sid == i
                where = str(out_dir / "chips") + (f" (scene {nm})" if multi else "")
                check_leakage(rows[sel], cols[sel], split_names[sel], size, sp.buffer, where=where)
            if multi:
                check_across_scenes(index, where=str(out_dir / "chips"))

        if (
            client is None
        ):  # in this process the extraction tasks run while a thread writes what needs no pixels
            with ThreadPoolExecutor(1) as pool:
                side_job = pool.submit(side)
                found = run_tasks(extract, args, client)
                side_job.result()  # its errors (leakage) are raised here
        else:  # after: a thread here would take a core from the workers of a LocalCluster (one worker, one core)
            found = run_tasks(extract, args, client)
            side()
        consolidate(tmp / "chips.zarr")
        n_points = _write_points(tmp / "points.parquet", found, parts, offsets, cfg, multi) if pts else 0
        splits = {s: np.flatnonzero(codes == k).tolist() for k, s in enumerate(SPLITS)}

        def named(table: np.ndarray | None) -> list[list[str]] | None:
            return None if table is None else [[SPLITS[int(v)] for v in r] for r in table]

        meta = {
            "size": size,
            "stride": cfg.stride or size,
            "sampler": cfg.sampler,
            "split_mode": sp.mode,
            "stratify": sp.stratify,
            "blocks_define_splits": sp.mode == "blocks",
            "block_splits": None if multi else named(picked[0].block_splits),
            "block_size": block,
            "buffer": sp.buffer,
            "min_valid": cfg.min_valid,
            "min_labelled": cfg.labelled_fraction,
            "counts": {s: len(v) for s, v in splits.items()},
            "class_pixels": {
                s: {name: int(counts[codes == k, i].sum()) for i, name in enumerate(names)}
                for k, s in enumerate(SPLITS)
            },
            "dropped_by_split": dropped,
            "points": n_points,
            **facts,
            "splits": splits,
        }
        if multi:
            meta["split_by"] = sp.by
            meta["scenes"] = {
                nm: {
                    "counts": {s: int((p.codes == k).sum()) for k, s in enumerate(SPLITS)},
                    "block_splits": named(p.block_splits),
                    **p.facts,
                }
                for (nm, _), p in zip(parts, picked, strict=True)
            }
        (tmp / "chips.json").write_text(json.dumps(meta))
    log.info("chips: %s (%d dropped at split borders)", meta["counts"], dropped)
    log.info("chips: labelled pixels per split and class %s", meta["class_pixels"])
    return ChipStore(root=out_dir / "chips", size=size, splits=splits)


def _write_points(
    path: Path,
    found: list[Any],
    parts: list[tuple[str, PreparedScene]],
    offsets: np.ndarray,
    cfg: ChipsConfig,
    multi: bool,
) -> int:
    from eoforge.chips.tasks import top_points

    chunks = [f for f in found if f is not None]
    if not chunks or cfg.points is None:
        return 0
    p = top_points(
        {k: np.concatenate([f[k] for f in chunks]) for k in chunks[0]},
        max(part.grid.width for _, part in parts),
        cfg.points.per_class,
        cfg.points.seed,
    )
    sid = np.searchsorted(offsets, p["row"], side="right") - 1  # rows were stacked scene under scene
    row = p["row"] - offsets[sid]
    tr = np.array([list(part.grid.transform)[:6] for _, part in parts])[sid]
    x = tr[:, 2] + (p["col"] + 0.5) * tr[:, 0] + (row + 0.5) * tr[:, 1]
    y = tr[:, 5] + (p["col"] + 0.5) * tr[:, 3] + (row + 0.5) * tr[:, 4]
    first = parts[0][1]
    ids = np.asarray(first.class_ids)
    gdf = gpd.GeoDataFrame(
        {
            "split": np.asarray(SPLITS, dtype=object)[p["split"]],
            "label": p["label"].astype(np.uint8),
            "class_id": ids[p["label"]],
            "row": row.astype(np.int64),
            "col": p["col"].astype(np.int64),
            **({"scene": np.asarray([nm for nm, _ in parts], dtype=object)[sid]} if multi else {}),
            **{b: p["values"][:, i] for i, b in enumerate(first.bands)},
        },
        geometry=gpd.points_from_xy(x, y),
        crs=first.grid.crs,
    )
    gdf.to_parquet(path)
    return len(gdf)
