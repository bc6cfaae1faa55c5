"""Stage 5, predict: streaming sliding-window inference over a whole scene, by row bands.

Windows come from :func:`eoforge.predict.blend.plan_bands` (the grid of :func:`eoforge.geo.overlap_tiles`).
They run window row after window row; their predictions go into a buffer of ``tile`` rows by the scene width,
and the band of rows that no later window touches is finished, saved (resume state) and dropped. So memory
depends on the window, the batch and the scene width, never on its height. ``center`` keeps each window's core
(every pixel comes from one window, exactly as the class map of earlier versions); ``hann``/``triangular`` sum
class probabilities with normalised weights. A reader thread fills the next batch while the model runs and a
writer thread saves finished bands. Row bands can also run as Dask tasks (``compute``), each task replaying
the few window rows before its first band, so the result is identical to one process.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from eoforge import __version__
from eoforge.errors import InputError, PackageError
from eoforge.geo import Grid
from eoforge.io.blockcache import cachemax
from eoforge.io.rasters import check_band_names, valid_mask
from eoforge.predict.blend import BLENDS, BandPlan, plan_bands
from eoforge.predict.outputs import (
    PROB_DTYPES,
    UNCERTAINTIES,
    BandResult,
    Parts,
    assemble,
    extra_paths,
    gdal_cache_mb,
)
from eoforge.prepare.dates import strip_date
from eoforge.tasks import get_task

if TYPE_CHECKING:
    from eoforge.config import ComputeConfig
    from eoforge.package import PackageMeta, Predictor

log = logging.getLogger(__name__)

TTAS = ("none", "d4")
VECTOR_FORMATS = ("gpkg", "parquet")


class Source(Protocol):
    """What the engine reads from (the :class:`~eoforge.io.rasters.RasterStack` interface)."""

    grid: Grid
    count: int

    def read(self, window: Window | None = None) -> np.ndarray: ...

    def close(self) -> None: ...


def valid_pixels(x: np.ndarray) -> np.ndarray:
    """The one nodata rule of the engine (:func:`eoforge.io.rasters.valid_mask`): a pixel is nodata only
    where *all* its bands are NaN. ``x`` is ``(..., C, H, W)``; returns a bool ``(..., H, W)``."""
    return valid_mask(x)


@dataclass(frozen=True)
class PredictOptions:
    """Everything that shapes the outputs of a prediction (mirrors the ``predict`` config section)."""

    tile: int | None = None
    overlap: int | None = None
    batch_size: int = 8
    blend: str | None = None  # None: the package's (how its evaluated map was made), else center
    tta: str | None = None  # None: the package's, else none
    probabilities: str | None = None
    uncertainty: str | None = None
    vectorize: str | None = None
    min_area: int = 0
    ignore_band_names: bool = False

    def check(self) -> None:
        """One-line :class:`InputError` for any value out of range."""
        if self.tile is not None and (self.tile <= 0 or self.tile % 32):
            raise InputError(
                f"predict tile {self.tile}: must be a positive multiple of 32 (the U-Net downsamples 5 times)"
            )
        if self.overlap is not None and self.overlap < 0:
            raise InputError(f"predict overlap {self.overlap}: must be >= 0")
        if self.tile is not None and self.overlap is not None and self.overlap >= self.tile:
            raise InputError(f"predict overlap {self.overlap}: must be smaller than the tile {self.tile}")
        if self.batch_size < 1:
            raise InputError(f"predict batch size {self.batch_size}: must be >= 1")
        if self.min_area < 0:
            raise InputError(f"predict min area {self.min_area}: must be >= 0 pixels")
        for name, value, allowed in (
            ("blend", self.blend, (None, *BLENDS)),
            ("tta", self.tta, (None, *TTAS)),
            ("probabilities", self.probabilities, (None, *PROB_DTYPES)),
            ("uncertainty", self.uncertainty, (None, *UNCERTAINTIES)),
            ("vectorize", self.vectorize, (None, *VECTOR_FORMATS)),
        ):
            if value not in allowed:
                valid = ", ".join(str(a) for a in allowed if a is not None)
                raise InputError(f"predict {name} '{value}': unknown; choose one of: {valid}")


@dataclass(frozen=True)
class PredictResult:
    path: Path
    grid: Grid
    windows: int
    seconds: float
    extras: dict[str, Path] = field(default_factory=dict)
    skipped_windows: int = 0
    resumed_bands: int = 0
    model_seconds: float = 0.0
    backend: str = ""
    #: process CPU seconds by part (see :func:`predict_scene`)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    #: the options the map was made with (the package's tile, overlap, tta and blend filled in)
    options: PredictOptions | None = None

    @property
    def pixels_per_second(self) -> float:
        return self.grid.height * self.grid.width / max(self.seconds, 1e-9)


def output_dtype(class_ids: Sequence[int]) -> tuple[str, int]:
    """Smallest unsigned dtype holding the class ids, and its nodata value (the dtype's maximum)."""
    if max(class_ids) < 255:
        return "uint8", 255
    return "uint16", 65535


def _pad_to(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pad ``(C, h0, w0)`` with NaN at the bottom/right to ``(C, h, w)``."""
    if a.shape[-2:] == (h, w):
        return a
    out = np.full((a.shape[0], h, w), np.nan, dtype=np.float32)
    out[:, : a.shape[1], : a.shape[2]] = a
    return out


_Item = tuple[int, list[int], np.ndarray | None, np.ndarray | None]


def _row_batches(
    source: Source, plan: BandPlan, k0: int, k1: int, batch_size: int, stats: dict[str, int]
) -> Iterator[_Item]:
    """Batches of the non-empty windows of window rows ``k0..k1-1`` with their valid-pixel masks (computed here,
    in the reader thread, once); a batch never spans two window rows (so a row's batches are the same wherever a
    run starts) and each row ends with ``(k, [], None, None)``."""
    ph, pw = -(-plan.th // 32) * 32, -(-plan.tw // 32) * 32
    n_cols = len(plan.cols)
    for k in range(k0, k1):
        js: list[int] = []
        arrays: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        chunk, c_lo, j_hi = np.empty(0, np.float32), 0, 0
        for j, c in enumerate(plan.cols):
            if j >= j_hi:
                # one read for the next `batch_size` windows of the row, sliced below: half the CPU of a read
                # per window (GDAL's per-call cost and the overlaps read twice; docs/PERFORMANCE.md), memory
                # of one batch
                j_hi, c_lo = min(n_cols, j + batch_size), c
                chunk = source.read(Window(c, plan.rows[k], plan.cols[j_hi - 1] + plan.tw - c, plan.th))
            a = chunk[:, :, c - c_lo : c - c_lo + plan.tw]
            valid = valid_pixels(a)
            if not valid.any():
                stats["skipped"] += 1  # entirely nodata: nothing to predict
                continue
            js.append(j)
            arrays.append(_pad_to(a, ph, pw))
            masks.append(valid if valid.shape == (ph, pw) else valid_pixels(arrays[-1]))
            if len(js) == batch_size:
                yield k, js, np.stack(arrays), np.stack(masks)
                js, arrays, masks = [], [], []
        if js:
            yield k, js, np.stack(arrays), np.stack(masks)
        yield k, [], None, None


def _prefetch(
    gen: Iterator[_Item], depth: int = 2, cache_mb: int | None = None, cpu: dict[str, float] | None = None
) -> Iterator[_Item]:
    """Run ``gen`` in a reader thread, ``depth`` batches ahead of the consumer, with GDAL's block cache capped at
    ``cache_mb`` MiB (rasterio's Env is per thread; GDAL's default cap, 5 % of the RAM, would keep every block
    of a scene that fits in it). The thread's CPU seconds are added to ``cpu["reader"]``."""
    q: queue.Queue[object] = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        c0 = time.thread_time()
        try:
            with rasterio.Env(**({} if cache_mb is None else {"GDAL_CACHEMAX": cachemax(cache_mb)})):
                _fill()
        except BaseException as exc:
            q.put(exc)
        finally:
            if cpu is not None:
                cpu["reader"] = cpu.get("reader", 0.0) + time.thread_time() - c0

    def _fill() -> None:
        for item in gen:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if stop.is_set():
                return
        q.put(done)

    th = threading.Thread(target=work, name="eoforge-reader", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        th.join(timeout=5)


def _parallel_rows(
    open_more: Callable[[], Source],
    plan: BandPlan,
    k0: int,
    k1: int,
    batch_size: int,
    stats: dict[str, Any],
    readers: int,
    cache_mb: int | None = None,
    cpu: dict[str, float] | None = None,
) -> Iterator[_Item]:
    """:func:`_row_batches` of window rows ``k0..k1-1`` read by ``readers`` threads, yielded in row order.

    For a GPU, where one reader thread cannot keep up with the model (an H100 ran the model 4x faster than one
    thread read and batched the windows). Each thread opens its own source (GDAL handles are not shared
    between threads) with its own capped block cache; at most ``readers + 1`` window rows are in memory. The
    threads' CPU seconds are added to ``cpu["reader"]``.
    """
    local = threading.local()
    opened: list[Source] = []
    lock = threading.Lock()
    env = {} if cache_mb is None else {"GDAL_CACHEMAX": cachemax(cache_mb)}

    def read_row(k: int) -> tuple[list[_Item], int, float]:
        c0 = time.thread_time()
        src = getattr(local, "source", None)
        if src is None:
            src = local.source = open_more()
            with lock:
                opened.append(src)
        row: dict[str, int] = {"skipped": 0}
        with rasterio.Env(**env):
            items = list(_row_batches(src, plan, k, k + 1, batch_size, row))
        return items, row["skipped"], time.thread_time() - c0

    pool = concurrent.futures.ThreadPoolExecutor(readers, thread_name_prefix="eoforge-reader")
    pending: collections.deque[concurrent.futures.Future[tuple[list[_Item], int, float]]] = (
        collections.deque()
    )
    try:
        k = k0
        while k < k1 or pending:
            while k < k1 and len(pending) < readers + 1:
                pending.append(pool.submit(read_row, k))
                k += 1
            items, skipped, secs = pending.popleft().result()
            stats["skipped"] += skipped
            if cpu is not None:
                cpu["reader"] = cpu.get("reader", 0.0) + secs
            yield from items
    finally:
        for f in pending:
            f.cancel()
        pool.shutdown(wait=True)
        for src in opened:
            src.close()


def readers_for(predictor: Predictor) -> int:
    """Reader threads for ``predictor``: one on a CPU (the model uses every core; a second reader only took
    cores from it), up to 4 for a GPU (a quarter of the cores)."""
    device = getattr(predictor, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        return max(1, min(4, (os.cpu_count() or 1) // 4))
    return 1


def _logits(predictor: Predictor, x: np.ndarray) -> torch.Tensor:
    """Float logits on the predictor's device: softmax, argmax and TTA run there, and only what the
    outputs need comes back (on a GPU, copying all logits back and reducing them on the CPU made the
    pipeline 6x slower than the model)."""
    return torch.as_tensor(predictor.logits(x)).float()


def _d4_probs(predictor: Predictor, x: np.ndarray) -> np.ndarray:
    """Class probabilities averaged over the 8 flips/rotations of the dihedral group D4."""
    acc: torch.Tensor | None = None
    for flip in (False, True):
        xf = x[..., ::-1] if flip else x
        for k in range(4):
            xt = np.ascontiguousarray(np.rot90(xf, k, axes=(2, 3)))
            p = torch.softmax(_logits(predictor, xt), dim=1)
            p = torch.rot90(p, -k, dims=(2, 3))
            if flip:
                p = torch.flip(p, dims=(3,))
            acc = p if acc is None else acc + p
    assert acc is not None
    return (acc / 8).cpu().numpy()


class _Buffer:
    """Predictions of the rows ``[r0, r0 + th)`` across the scene width, until their band is finished."""

    def __init__(self, plan: BandPlan, num_classes: int, direct: bool, keep_probs: bool, r0: int) -> None:
        self.plan, self.direct, self.r0 = plan, direct, r0
        shape = (plan.th, plan.width)
        self.valid = np.zeros(shape, bool)
        self.idx = np.zeros(shape, np.uint8) if direct else None
        self.acc = np.zeros((num_classes, *shape), np.float32) if (keep_probs or not direct) else None

    def add(
        self, k: int, j: int, idx: np.ndarray | None, probs: np.ndarray | None, valid: np.ndarray
    ) -> None:
        plan = self.plan
        lo, hi = plan.extent[k]
        lo = max(lo, self.r0)
        if hi <= lo:
            return
        rs, c = plan.rows[k], plan.cols[j]
        b0, b1, w0, w1 = lo - self.r0, hi - self.r0, lo - rs, hi - rs
        c0, c1 = plan.col_extent[j]
        v0, v1 = c0 - c, c1 - c
        self.valid[b0:b1, c0:c1] = valid[w0:w1, v0:v1]
        if self.direct:
            assert self.idx is not None and idx is not None
            self.idx[b0:b1, c0:c1] = idx[w0:w1, v0:v1]
            if self.acc is not None and probs is not None:
                self.acc[:, b0:b1, c0:c1] = probs[:, w0:w1, v0:v1]
        else:
            assert self.acc is not None and probs is not None
            wgt = plan.row_weights[k][w0:w1, None] * plan.col_weights[j][None, v0:v1]
            self.acc[:, b0:b1, c0:c1] += probs[:, w0:w1, v0:v1] * wgt

    def flush(
        self, k: int, lut: np.ndarray, nodata: int, probabilities: str | None, uncertainty: str | None
    ) -> BandResult:
        plan = self.plan
        if plan.bounds[k] != self.r0:
            raise RuntimeError(f"band {k} starts at row {plan.bounds[k]}, buffer at {self.r0}")
        h = plan.bounds[k + 1] - plan.bounds[k]
        valid = self.valid[:h].copy()
        if self.direct:
            assert self.idx is not None
            index = self.idx[:h]
        else:
            assert self.acc is not None
            index = self.acc[:, :h].argmax(axis=0)
        classes = lut[index]
        classes[~valid] = nodata
        probs_out: np.ndarray | None = None
        unc: np.ndarray | None = None
        if self.acc is not None and (probabilities or uncertainty):
            p = self.acc[:, :h]
            if probabilities == "uint8":
                probs_out = np.rint(np.clip(p, 0.0, 1.0) * 255).astype(np.uint8)
                probs_out[:, ~valid] = 0
            elif probabilities == "float32":
                probs_out = p.copy()
                probs_out[:, ~valid] = np.nan
            if uncertainty == "entropy":
                with np.errstate(divide="ignore", invalid="ignore"):
                    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
                unc = (-plogp.sum(axis=0) / np.log(max(p.shape[0], 2))).astype(np.float32)
            elif uncertainty == "max-prob":
                unc = (1.0 - p.max(axis=0)).astype(np.float32)
            if unc is not None:
                unc[~valid] = np.nan
        band = BandResult(index=k, row0=plan.bounds[k], classes=classes, probs=probs_out, uncertainty=unc)
        # shift the buffer up by the finished band
        for a in (self.valid, self.idx):
            if a is not None:
                a[: plan.th - h] = a[h:]
                a[plan.th - h :] = 0
        if self.acc is not None:
            self.acc[:, : plan.th - h] = self.acc[:, h:]
            self.acc[:, plan.th - h :] = 0
        self.r0 += h
        return band


@dataclass(frozen=True)
class _Job:
    """What a run of bands needs besides the predictor and the source (picklable, for Dask tasks)."""

    height: int
    width: int
    tile: int
    overlap: int
    opts: PredictOptions
    class_ids: tuple[int, ...]

    @functools.cached_property
    def plan(self) -> BandPlan:
        return plan_bands(self.height, self.width, self.tile, self.overlap, self.opts.blend or "center")


def run_bands(
    predictor: Predictor,
    source: Source,
    job: _Job,
    j0: int,
    j1: int,
    stats: dict[str, Any] | None = None,
    open_more: Callable[[], Source] | None = None,
    readers: int = 1,
) -> Iterator[BandResult]:
    """Predict row bands ``j0..j1-1``, replaying the earlier window rows that have weight on band ``j0``.
    With ``readers`` > 1 and ``open_more`` (opens another source on the same images), that many threads read
    the window rows (:func:`_parallel_rows`); the outputs are the same."""
    plan, opts = job.plan, job.opts
    stats = stats if stats is not None else {}
    stats.setdefault("skipped", 0)
    stats.setdefault("model_seconds", 0.0)
    cpu: dict[str, float] = stats.setdefault("cpu", {})
    dtype, nodata = output_dtype(job.class_ids)
    lut = np.array(job.class_ids, dtype=dtype)
    direct = opts.blend == "center" and opts.tta == "none"
    keep_probs = bool(opts.probabilities or opts.uncertainty)
    buf = _Buffer(plan, len(job.class_ids), direct, keep_probs, plan.bounds[j0])
    k0 = plan.first_window_row(j0)
    # the reader keeps the source's blocks of a window row and of the next (blocks up to 512 rows, float32)
    cache = gdal_cache_mb(plan.width, 4 * source.count, plan.th + 2 * 512)
    if readers > 1 and open_more is not None:
        items = _parallel_rows(open_more, plan, k0, j1, opts.batch_size, stats, readers, cache, cpu)
    else:
        items = _prefetch(_row_batches(source, plan, k0, j1, opts.batch_size, stats), cache_mb=cache, cpu=cpu)
    for k, js, batch, valid in items:
        if batch is None or valid is None:
            if k >= j0:
                c0 = time.thread_time()
                band = buf.flush(k, lut, nodata, opts.probabilities, opts.uncertainty)
                cpu["blend"] = cpu.get("blend", 0.0) + time.thread_time() - c0
                yield band
            continue
        t0 = time.perf_counter()
        idx = probs = None
        if opts.tta == "d4":
            probs = _d4_probs(predictor, batch)
        else:
            logits = _logits(predictor, batch)
            if direct:
                # max(1).indices: ~15x faster than argmax on CPU, and what earlier versions wrote
                idx = logits.max(1).indices.to(torch.uint8).cpu().numpy()
            if not direct or keep_probs:
                probs = torch.softmax(logits, dim=1).cpu().numpy()
        stats["model_seconds"] += time.perf_counter() - t0
        c0 = time.thread_time()
        for n, j in enumerate(js):
            buf.add(
                k,
                j,
                None if idx is None else idx[n],
                None if probs is None else probs[n],
                valid[n],
            )
        cpu["blend"] = cpu.get("blend", 0.0) + time.thread_time() - c0


# -- the run: source, resume state, single process or Dask ---------------------------------------------------


def open_source(images: Sequence[str | Path], meta: PackageMeta) -> Source:
    """The raster the engine reads: the package's preparation recipe applied to the raw files, streaming
    (the same code path as training's `prepare`); a plain band stack for packages without a recipe."""
    from eoforge.prepare.recipe import open_source as recipe_source

    return recipe_source(meta, images)


def check_bands(
    source: Source, images: Sequence[str | Path], meta: PackageMeta, ignore_band_names: bool = False
) -> None:
    """Refuse a source whose bands do not match the model's: band names where the files carry them (their
    descriptions, in order), then the count."""
    try:
        check_band_names(getattr(source, "described_names", None), meta.source_band_names, ignore_band_names)
    except InputError as exc:
        raise InputError(f"{Path(images[0])}: {exc}") from None
    if source.count != len(meta.bands):
        raise PackageError(
            f"{Path(images[0])}: the image stack has {source.count} bands but the model was trained on "
            f"{len(meta.bands)} ({', '.join(meta.bands)}); give the same bands in the same order"
        )


def _resolved(entry: Any) -> Any:
    """An images entry with absolute paths (for Dask workers): a ``DATE=PATH`` string keeps its date."""
    if isinstance(entry, list | tuple):
        return [_resolved(q) for q in entry]
    path = strip_date(entry)
    prefix = str(entry)[: len(str(entry)) - len(path)]
    return prefix + str(Path(path).resolve())


def _input_files(images: Sequence[Any]) -> list[Path]:
    """The files behind ``images``: entries may be globs or lists of mosaic tiles (as in ``inputs.images``),
    ``DATE=PATH`` strings of a time stack."""
    import glob

    out: list[Path] = []
    for entry in images:
        for raw in entry if isinstance(entry, (list, tuple)) else [entry]:
            item = strip_date(raw)
            hits = sorted(glob.glob(str(item))) if any(ch in str(item) for ch in "*?[") else [str(item)]
            out.extend(Path(h) for h in hits if Path(h).exists())
    return out


def _run_key(predictor: Predictor, images: Sequence[str | Path], job: _Job) -> dict[str, Any]:
    """What makes a finished band reusable: the model (its metadata and its output on a fixed probe), the input
    files (path, size, modification time) and every option."""
    meta = predictor.meta
    files = []
    for p in _input_files(images):
        st = p.stat()
        files.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return {
        "eoforge": __version__,
        "meta": meta.to_json() | {"eoforge_version": None},
        "backend": getattr(predictor, "backend", type(predictor).__name__),
        "probe": _probe_hash(predictor),
        "images": files,
        "job": asdict(job.opts)
        | {"tile": job.tile, "overlap": job.overlap, "height": job.height, "width": job.width},
    }


_PROBE_HASHES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _probe_hash(predictor: Predictor) -> str:
    """Hash of the predictor's logits on a fixed 32 x 32 probe, once per predictor object: a model call on a
    new shape costs 0.05-0.6 s of CPU (oneDNN kernels for the shape; more on a loaded machine), which every
    prediction of a server or a benchmark would pay again."""
    try:
        return _PROBE_HASHES[predictor]
    except (KeyError, TypeError):
        pass
    meta = predictor.meta
    probe = np.random.default_rng(0).standard_normal((1, len(meta.bands), 32, 32)).astype(np.float32)
    probe = (
        probe * np.asarray(meta.std, np.float32)[:, None, None]
        + np.asarray(meta.mean, np.float32)[:, None, None]
    )
    out = np.round(_logits(predictor, probe).cpu().numpy().astype(np.float64), 3)
    digest = hashlib.sha256(out.tobytes()).hexdigest()
    with contextlib.suppress(TypeError):  # an object that takes no weak reference is probed each time
        _PROBE_HASHES[predictor] = digest
    return digest


@dataclass(frozen=True)
class PredictorSpec:
    """How to load a predictor again (in a Dask worker): package folder, backend and device."""

    package: str
    backend: str
    device: str


@functools.lru_cache(maxsize=2)
def _cached_predictor(spec: PredictorSpec) -> Predictor:
    from eoforge.predict.backends import load_predictor

    return load_predictor(spec.package, backend=spec.backend, device=spec.device)


def _bands_task(
    spec: PredictorSpec, images: tuple[str, ...], job: _Job, j0: int, j1: int
) -> tuple[list[BandResult], dict[str, Any]]:
    """A Dask task: load the package once per worker process, predict bands ``j0..j1-1``."""
    predictor = _cached_predictor(spec)
    stats: dict[str, Any] = {}
    source = open_source(images, predictor.meta)
    try:
        return list(run_bands(predictor, source, job, j0, j1, stats)), stats
    finally:
        source.close()


def predict_scene(
    predictor: Predictor,
    images: Sequence[str | Path],
    out: str | Path,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    on_progress: Callable[[int, int], None] | None = None,
    options: PredictOptions | None = None,
    compute: ComputeConfig | None = None,
    ignore_band_names: bool = False,
) -> PredictResult:
    """Classify every pixel of the stacked ``images`` and write a class-id COG to ``out`` (plus the optional
    outputs of ``options`` beside it). ``tile``/``overlap``/``batch_size`` override ``options``.

    The result's ``cpu_seconds`` splits the process CPU time: ``setup`` (opening the source, the resume key),
    ``reader`` (the reader thread: reading, nodata, valid masks, batching), ``blend`` (the model thread's
    buffer work: placing windows, finishing bands), ``writer`` (saving finished bands), ``model`` (the rest of
    the run phase: the model calls with their OpenMP threads, normalisation, argmax/softmax; single process
    only), ``assemble`` (the COGs) and ``total``."""
    meta = predictor.meta
    task = get_task(meta.task)  # the package's task says what predict writes
    if not task.writes_class_map:
        raise PackageError(
            f"the model is a '{task.name}' model ({', '.join(task.predict_writes)}), not a per-pixel one; "
            "predict it with eoforge.scene.predict.predict_windows"
        )
    opts = options or PredictOptions()
    opts = PredictOptions(
        **(
            asdict(opts)
            | {
                "tile": tile if tile is not None else (opts.tile or meta.tile),
                "overlap": overlap
                if overlap is not None
                else (meta.overlap if opts.overlap is None else opts.overlap),
                "batch_size": batch_size if options is None else opts.batch_size,
                "blend": opts.blend or meta.blend,
                "tta": opts.tta or meta.tta,
                "ignore_band_names": opts.ignore_band_names or ignore_band_names,
            }
        )
    )
    opts.check()
    assert opts.tile is not None and opts.overlap is not None
    out = Path(out)
    if out.is_dir():
        raise InputError(
            f"{out}: is a folder; give the path of the map file to write (e.g. {out / 'map.tif'})"
        )
    for img in _input_files(images):
        if out.exists() and out.resolve() == img.resolve():
            raise InputError(f"{out}: the output is one of the input images; write the map to another file")
    t0, c0 = time.perf_counter(), time.process_time()
    source = open_source(images, meta)
    try:
        check_bands(source, images, meta, opts.ignore_band_names)
        grid = source.grid
        job = _Job(grid.height, grid.width, opts.tile, opts.overlap, opts, tuple(predictor.class_ids))
        plan = job.plan
        extras = extra_paths(out, opts.probabilities, opts.uncertainty, opts.vectorize)
        parts = Parts(out, _run_key(predictor, images, job), tuple(extras.values()))
        done = parts.done()
        todo = [k for k in range(plan.n_bands) if k not in done]
        if done:
            log.info("resuming %s: %d of %d row bands already done", out, len(done), plan.n_bands)
        if opts.tta == "d4":
            log.info("tta d4: 8 model passes per window (about 8x the model time)")
        stats: dict[str, Any] = {"skipped": 0, "model_seconds": 0.0, "cpu": {}}
        per_band = len(plan.cols)
        total = plan.n_bands * per_band
        progress = [len(done) * per_band]

        def report(_: object = None) -> None:
            progress[0] += per_band
            if on_progress is not None:
                on_progress(progress[0], total)

        runs = _contiguous(todo)
        c_run = time.process_time()
        if compute is not None and (compute.scheduler is not None or compute.workers is not None) and runs:
            _run_distributed(predictor, images, job, runs, parts, report, stats, compute)
        else:
            _run_local(predictor, source, job, runs, parts, report, stats, lambda: open_source(images, meta))
            outside = sum(stats["cpu"].get(p, 0.0) for p in ("reader", "blend", "writer"))
            stats["cpu"]["model"] = time.process_time() - c_run - outside
        stats["cpu"]["setup"] = c_run - c0
    finally:
        source.close()
    c_asm = time.process_time()
    assemble(
        parts,
        plan.n_bands,
        grid,
        out,
        extras,
        output_dtype(predictor.class_ids)[0],
        output_dtype(predictor.class_ids)[1],
        _colormap(predictor) if output_dtype(predictor.class_ids)[0] == "uint8" else None,
        predictor.num_classes,
        opts.probabilities,
        _vectorizer(opts, predictor, grid) if opts.vectorize else None,
        band_rows=plan.th,
    )
    cpu = {k: float(v) for k, v in stats["cpu"].items()}
    cpu["assemble"] = time.process_time() - c_asm
    cpu["total"] = time.process_time() - c0
    secs = time.perf_counter() - t0
    log.info(
        "predicted %dx%d px in %.1f s (%.0f px/s; model %.1f s; %d empty windows skipped)",
        grid.width,
        grid.height,
        secs,
        grid.width * grid.height / secs,
        stats["model_seconds"],
        stats["skipped"],
    )
    log.info("CPU seconds by part: %s", ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
    return PredictResult(
        path=out,
        grid=grid,
        windows=plan.n_bands * len(plan.cols),
        seconds=secs,
        extras=extras,
        skipped_windows=int(stats["skipped"]),
        resumed_bands=len(done),
        model_seconds=float(stats["model_seconds"]),
        backend=str(getattr(predictor, "backend", type(predictor).__name__)),
        cpu_seconds=cpu,
        options=opts,
    )


def _contiguous(bands: list[int]) -> list[tuple[int, int]]:
    """``[0, 1, 2, 5, 6]`` -> ``[(0, 3), (5, 7)]``."""
    runs: list[tuple[int, int]] = []
    for b in bands:
        if runs and runs[-1][1] == b:
            runs[-1] = (runs[-1][0], b + 1)
        else:
            runs.append((b, b + 1))
    return runs


def _run_local(
    predictor: Predictor,
    source: Source,
    job: _Job,
    runs: list[tuple[int, int]],
    parts: Parts,
    report: Callable[[object], None],
    stats: dict[str, Any],
    open_more: Callable[[], Source] | None = None,
) -> None:
    """Single process: the writer thread saves each finished band while the model works on the next."""
    readers = readers_for(predictor)
    if readers > 1:
        log.info("%d reader threads for the %s model", readers, getattr(predictor, "device", "?"))
    cpu = stats.setdefault("cpu", {})

    def save(band: BandResult) -> None:
        c0 = time.thread_time()
        parts.save(band)
        cpu["writer"] = cpu.get("writer", 0.0) + time.thread_time() - c0  # only this thread writes the key

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="eoforge-writer") as writer:
        pending: list[concurrent.futures.Future[None]] = []
        try:
            for j0, j1 in runs:
                for band in run_bands(predictor, source, job, j0, j1, stats, open_more, readers):
                    pending.append(writer.submit(save, band))
                    while pending and (pending[0].done() or len(pending) > 2):
                        pending.pop(0).result()
                        report(None)
            while pending:
                pending.pop(0).result()
                report(None)
        finally:
            concurrent.futures.wait(pending)


def _run_distributed(
    predictor: Predictor,
    images: Sequence[str | Path],
    job: _Job,
    runs: list[tuple[int, int]],
    parts: Parts,
    report: Callable[[object], None],
    stats: dict[str, Any],
    compute: ComputeConfig,
) -> None:
    """Row bands as Dask tasks; each worker loads the package once (cached per process)."""
    from distributed import as_completed

    from eoforge.compute import dask_client

    spec = getattr(predictor, "spec", None)
    if not isinstance(spec, PredictorSpec):
        raise InputError(
            "distributed predict needs a predictor loaded from a package folder "
            "(eoforge.predict.predict or backends.load_predictor); load it with one of them"
        )
    with dask_client(compute) as client:
        assert client is not None
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or (compute.workers or 1))
        tasks = []
        imgs = tuple(_resolved(p) for p in images)
        for j0, j1 in runs:
            step = max(1, -(-(j1 - j0) // (2 * n_workers)))
            for a in range(j0, j1, step):
                tasks.append(client.submit(_bands_task, spec, imgs, job, a, min(j1, a + step), pure=False))
        for fut in as_completed(tasks):
            bands, task_stats = fut.result()
            stats["skipped"] += task_stats.get("skipped", 0)
            stats["model_seconds"] += task_stats.get("model_seconds", 0.0)
            for part, secs in task_stats.get("cpu", {}).items():  # the workers' reader and blend
                stats["cpu"][part] = stats["cpu"].get(part, 0.0) + secs
            for band in bands:
                parts.save(band)
                report(None)


def _colormap(predictor: Predictor) -> dict[int, tuple[int, int, int, int]]:
    cmap = {}
    for c in predictor.meta.classes:
        h = c.color.lstrip("#")
        cmap[c.id] = (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16), 255)
    return cmap


def _vectorizer(opts: PredictOptions, predictor: Predictor, grid: Grid) -> Callable[[Path, Path], None]:
    from eoforge.predict.vectorize import vectorize_map

    names = {c.id: c.name for c in predictor.meta.classes}

    def run(class_map: Path, target: Path) -> None:
        vectorize_map(class_map, target, fmt=opts.vectorize or "gpkg", min_area=opts.min_area, names=names)

    return run


def _probe(source: Source, tile: int) -> np.ndarray | None:
    """Windows for ``auto`` to check its agreement with fp32 on the data it will predict: one at the centre of
    each quarter of the scene, sides half a tile (cut to multiples of 32), so the probe has one tile's pixels
    (it costs about one window in each precision) but sees four parts of the scene instead of its centre only.
    Windows without valid pixels are left out; ``None`` when none is left or the scene is smaller than 32 px."""
    g = source.grid
    side = max(32, tile // 2)
    h, w = min(side, g.height) // 32 * 32, min(side, g.width) // 32 * 32
    if h == 0 or w == 0:
        return None
    offsets = {
        (
            min(max(int(fy * g.height) - h // 2, 0), g.height - h),
            min(max(int(fx * g.width) - w // 2, 0), g.width - w),
        )
        for fy in (0.25, 0.75)
        for fx in (0.25, 0.75)
    }
    windows = [source.read(Window(c, r, w, h)) for r, c in sorted(offsets)]
    windows = [a for a in windows if valid_pixels(a).any()]
    return np.stack(windows) if windows else None


def predict(
    model_dir: str | Path,
    images: Sequence[str | Path],
    out: str | Path,
    tile: int | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    device: str = "cpu",
    on_progress: Callable[[int, int], None] | None = None,
    precision: str | None = None,
    options: PredictOptions | None = None,
    backend: str = "auto",
    compute: ComputeConfig | None = None,
    ignore_band_names: bool = False,
) -> PredictResult:
    """Load a model package and classify a scene: ``eoforge predict MODEL_DIR IMAGE... -o OUT.tif``.

    ``ignore_band_names`` accepts files whose band descriptions differ from the model's band names.

    ``precision`` is the older way to pick a backend: ``fp32`` = ``torch-fp32``, ``bf16`` = ``torch``.
    """
    from eoforge.package import read_meta
    from eoforge.predict.backends import load_predictor, precision_backend

    if precision is not None:
        backend = precision_backend(precision)
    opts = options or PredictOptions(tile=tile, overlap=overlap, batch_size=batch_size)
    if ignore_band_names:
        opts = replace(opts, ignore_band_names=True)
    opts.check()
    probe = None
    if backend == "auto":
        meta = read_meta(model_dir)
        source = open_source(images, meta)
        try:
            check_bands(source, images, meta, opts.ignore_band_names)
            probe = _probe(source, opts.tile or meta.tile)
        finally:
            source.close()
    predictor = load_predictor(model_dir, backend=backend, device=device, probe=probe)
    return predict_scene(
        predictor, images, out, tile, overlap, batch_size, on_progress, options=opts, compute=compute
    )
