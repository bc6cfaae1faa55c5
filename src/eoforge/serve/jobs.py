"""Jobs of the service: admission slots, a bounded thread pool running ``predict_scene``, state and cleanup.

A *slot* is taken before an upload is read and given back when its work ends, so at most ``workers`` scenes
are predicted at once and ``queue`` more wait (memory and disk stay bounded). Files live in a private
temporary folder, one sub-folder per job named by a random id; nothing a client sends names a file.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import rasterio
from rasterio.errors import RasterioIOError

from eoforge.package import PackageMeta, Predictor
from eoforge.predict import predict_scene
from eoforge.serve.preview import render_preview

log = logging.getLogger(__name__)


def _malloc_trim() -> None:
    """Give freed heap pages back to the OS after a job (glibc only; no-op elsewhere).

    Large scenes allocate and free big numpy/GDAL buffers from several threads; glibc keeps them in per-thread
    arenas, so a long-running server's RSS creeps up without a leak. ``malloc_trim(0)`` returns them.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


Status = Literal["queued", "running", "done", "failed"]


class Rejected(Exception):
    """An upload the service refuses: ``status`` is the HTTP code (415, 422), the message says why and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Cancelled(Exception):
    """Raised from the progress callback when the server shuts down before a job finished."""


class Slot:
    """One admitted unit of work; ``release`` is idempotent."""

    def __init__(self, manager: JobManager) -> None:
        self._manager = manager
        self._released = False
        self.owned_by_job = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._manager._release()


@dataclass
class Job:
    id: str
    folder: Path
    status: Status = "queued"
    done: int = 0
    total: int = 0
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    preview: bool = False
    future: Future[None] | None = None

    @property
    def input(self) -> Path:
        return self.folder / "input.tif"

    @property
    def output(self) -> Path:
        return self.folder / "map.tif"

    def to_json(self) -> dict[str, Any]:
        frac = self.done / self.total if self.total else (1.0 if self.status == "done" else 0.0)
        return {
            "id": self.id,
            "status": self.status,
            "progress": {"windows_done": self.done, "windows_total": self.total, "fraction": round(frac, 4)},
            "error": self.error,
            "created": self.created,
            "finished": self.finished,
        }


class JobManager:
    def __init__(
        self,
        predictor: Predictor,
        workers: int,
        queue: int,
        keep_jobs: int,
        batch_size: int = 4,
        job_workers: int = 1,
    ) -> None:
        self.predictor = predictor
        self.meta: PackageMeta = predictor.meta
        self.capacity = workers + job_workers + queue
        self.batch_size = batch_size
        self.keep_jobs = keep_jobs
        # two pools: a small scene posted to /predict never waits behind large background jobs
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="eoforge-predict")
        self._job_pool = ThreadPoolExecutor(max_workers=job_workers, thread_name_prefix="eoforge-job")
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._cancel = threading.Event()
        self.closing = False
        self.root = Path(tempfile.mkdtemp(prefix="eoforge-serve-"))  # mode 0700: private to this user

    # --- admission -------------------------------------------------------------------------------------
    def reserve(self) -> Slot | None:
        with self._lock:
            if self.closing or self._admitted >= self.capacity:
                return None
            self._admitted += 1
        return Slot(self)

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1

    def load(self) -> dict[str, int]:
        with self._lock:
            return {"admitted": self._admitted, "running": self._running, "capacity": self.capacity}

    # --- jobs ------------------------------------------------------------------------------------------
    def new_job(self) -> Job:
        job = Job(id=uuid.uuid4().hex, folder=self.root / uuid.uuid4().hex)
        job.folder.mkdir()
        with self._lock:
            self._jobs[job.id] = job
            self._evict()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def forget(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def _evict(self) -> None:
        """Drop the oldest finished jobs (and their files) beyond ``keep_jobs``; called with the lock held."""
        finished = [j for j in self._jobs.values() if j.status in ("done", "failed")]
        for job in finished[: max(0, len(finished) - self.keep_jobs)]:
            self._jobs.pop(job.id, None)
            shutil.rmtree(job.folder, ignore_errors=True)

    def check_upload(self, path: Path) -> None:
        """Refuse what is not a georeferenced raster with the model's band count (415 / 422)."""
        try:
            with rasterio.open(path) as src:
                count, crs, shape = src.count, src.crs, (src.height, src.width)
        except RasterioIOError:
            raise Rejected(415, "the upload is not a raster GDAL can read; send a GeoTIFF") from None
        n = len(self.meta.bands)
        if count != n:
            raise Rejected(
                422,
                f"the raster has {count} bands but the model needs {n} ({', '.join(self.meta.bands)}); "
                "send the same bands in the same order",
            )
        if crs is None:
            raise Rejected(
                422, "the raster has no CRS; assign one (e.g. gdal_edit.py -a_srs) and send it again"
            )
        if min(shape) < 1:
            raise Rejected(422, "the raster is empty")

    def submit(self, job: Job, slot: Slot, background: bool = False) -> Future[None]:
        slot.owned_by_job = True
        job.future = (self._job_pool if background else self._pool).submit(self._run, job, slot)
        return job.future

    def _run(self, job: Job, slot: Slot) -> None:
        with self._lock:
            self._running += 1
        job.status = "running"

        def progress(done: int, total: int) -> None:
            job.done, job.total = done, total
            if self._cancel.is_set():
                raise Cancelled()

        try:
            if self._cancel.is_set():
                raise Cancelled()
            predict_scene(
                self.predictor, [job.input], job.output, batch_size=self.batch_size, on_progress=progress
            )
            if job.preview:
                body = render_preview(job.input, job.output, self.meta)
                (job.folder / "preview.json").write_text(json.dumps(body))
            job.status = "done"
        except Cancelled:
            job.status, job.error = "failed", "the server shut down before the job finished; submit it again"
        except Exception as exc:  # a job must end as failed with its reason, never vanish
            log.exception("job %s failed", job.id)
            job.status, job.error = "failed", " ".join(str(exc).split())[:300] or type(exc).__name__
        finally:
            job.finished = time.time()
            job.input.unlink(missing_ok=True)
            with self._lock:
                self._running -= 1
            slot.release()
            _malloc_trim()

    def shutdown(self, grace_s: float) -> None:
        """Stop admitting, let running and queued jobs finish for ``grace_s``, then fail the rest cleanly."""
        self.closing = True
        deadline = time.monotonic() + grace_s
        with self._lock:
            pending = [j.future for j in self._jobs.values() if j.future is not None and not j.future.done()]
        for fut in pending:
            try:
                fut.result(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # timeout or the job's own failure (already recorded on the job)
                break
        self._cancel.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._job_pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for job in self._jobs.values():
                if job.status in ("queued", "running"):
                    job.status, job.error = "failed", "the server shut down before the job started"
        shutil.rmtree(self.root, ignore_errors=True)
        log.info("serve: shut down (%d jobs known)", len(self._jobs))
