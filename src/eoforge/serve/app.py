"""The FastAPI application of ``eoforge serve`` (see :mod:`eoforge.serve`).

No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at run time.
"""

import asyncio
import json
import logging
import shutil
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from eoforge import __version__
from eoforge.errors import InputError
from eoforge.package import ITEM, load_package
from eoforge.package.archive import open_package
from eoforge.serve.jobs import Job, JobManager, Rejected, Slot
from eoforge.serve.preview import class_counts

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_PATHS = {"/predict", "/jobs"}
JOB_ID = r"^[0-9a-f]{32}$"
Upload = Annotated[
    UploadFile, File(description="GeoTIFF with the model's bands in training order (multipart field `file`).")
]
Format = Annotated[
    Literal["tif", "json"], Query(description="tif: class-map GeoTIFF; json: pixel counts, areas")
]
JobId = Annotated[str, PathParam(pattern=JOB_ID, description="Job id returned by POST /jobs")]


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_upload_mb: int = Field(
        default=200, ge=1, description="Largest accepted upload in MiB; larger gets 413."
    )
    workers: int = Field(
        default=2, ge=1, description="Scenes posted to /predict predicted at once (threads)."
    )
    job_workers: int = Field(default=1, ge=1, description="Background jobs (POST /jobs) predicted at once.")
    queue: int = Field(
        default=8, ge=0, description="Requests or jobs waiting beyond the running ones; then 503."
    )
    retry_after_s: int = Field(
        default=5, ge=1, description="Retry-After header of a 503 when the queue is full."
    )
    keep_jobs: int = Field(
        default=100, ge=1, description="Finished jobs (and result files) kept for download."
    )
    batch_size: int = Field(default=4, ge=1, description="Windows per model call in predict_scene.")
    grace_s: float = Field(
        default=30.0, ge=0, description="At shutdown, time running jobs get to finish before they are failed."
    )


class TooLarge(HTTPException):
    def __init__(self, limit_mb: int) -> None:
        super().__init__(
            413, f"upload larger than {limit_mb} MiB; use a smaller scene or ask for a higher limit"
        )


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})


class UploadGuard:
    """ASGI guard for uploads: admission (503 + Retry-After) before the body is read, and the size limit
    (413 from Content-Length, or while streaming when the body is larger than announced or chunked)."""

    def __init__(self, app: ASGIApp, jobs: JobManager, settings: ServeSettings) -> None:
        self.app = app
        self.jobs = jobs
        self.settings = settings
        self.limit = settings.max_upload_mb * 1024 * 1024

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in UPLOAD_PATHS:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _send_json(send, 400, {"detail": "invalid Content-Length header"})
                return
            if int(length) > self.limit:
                await _send_json(send, 413, {"detail": TooLarge(self.settings.max_upload_mb).detail})
                return
        slot = self.jobs.reserve()
        if slot is None:
            detail = (
                "the server is shutting down"
                if self.jobs.closing
                else "all workers and queue places are busy"
            )
            await _send_json(
                send,
                503,
                {"detail": f"{detail}; retry later"},
                {"Retry-After": str(self.settings.retry_after_s)},
            )
            return
        scope["eoforge_slot"] = slot
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise TooLarge(self.settings.max_upload_mb)
            return message

        try:
            await self.app(scope, limited, send)
        finally:
            if not slot.owned_by_job:
                slot.release()


def _slot(request: Request) -> Slot:
    slot: Slot = request.scope["eoforge_slot"]
    return slot


def _save_upload(upload: UploadFile, job: Job) -> None:
    upload.file.seek(0)
    with open(job.input, "wb") as dst:
        shutil.copyfileobj(upload.file, dst, 1 << 20)


async def _accept(request: Request, upload: UploadFile, jobs: JobManager) -> Job:
    """Copy the upload into a new job folder and check it is a raster the model can take."""
    job = jobs.new_job()
    try:
        await run_in_threadpool(_save_upload, upload, job)
        await run_in_threadpool(jobs.check_upload, job.input)
    except Rejected as exc:
        jobs.forget(job)
        raise HTTPException(exc.status, str(exc)) from None
    except BaseException:
        jobs.forget(job)
        raise
    finally:
        await upload.close()
    return job


def create_app(model: str | Path, settings: ServeSettings | None = None) -> FastAPI:
    """The service for the package ``model`` (folder or zip); loads it once, serves until shutdown."""
    settings = settings or ServeSettings()
    predictor = load_package(model)
    meta = predictor.meta
    with open_package(model) as pkg:
        item = json.loads(pkg.read(ITEM)) if pkg.has(ITEM) else None
    if item is None:
        from eoforge.package.mlm import build_item

        item = build_item(meta, {})
    jobs = JobManager(
        predictor,
        settings.workers,
        settings.queue,
        settings.keep_jobs,
        settings.batch_size,
        settings.job_workers,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("serving %s (%s/%s, %d bands)", model, meta.arch, meta.encoder, len(meta.bands))
        yield
        await run_in_threadpool(jobs.shutdown, settings.grace_s)

    app = FastAPI(
        title="eoforge model service",
        version=__version__,
        description=f"Semantic segmentation with the eoforge package `{Path(model).name}`: "
        f"{len(meta.bands)} bands ({', '.join(meta.bands)}), {len(meta.classes)} classes.",
        lifespan=lifespan,
    )
    app.state.jobs = jobs
    app.add_middleware(UploadGuard, jobs=jobs, settings=settings)
    static = resources.files("eoforge.serve") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse((static / "index.html").read_text(encoding="utf-8"))

    @app.get("/health", summary="Liveness and load")
    def health() -> dict[str, Any]:
        return {
            "status": "shutting-down" if jobs.closing else "ok",
            "version": __version__,
            "model": f"{meta.arch}/{meta.encoder}",
            **jobs.load(),
        }

    @app.get("/model", summary="The model's STAC Item with the MLM extension")
    def model_item() -> JSONResponse:
        return JSONResponse(item, media_type="application/geo+json")

    responses: dict[int | str, dict[str, Any]] = {
        200: {"content": {"image/tiff": {}, "application/json": {}}},
        413: {"description": "Upload larger than --max-upload-mb"},
        415: {"description": "Not a raster"},
        422: {"description": "Wrong band count, no CRS, or a malformed request"},
        503: {"description": "Queue full or shutting down (see Retry-After)"},
    }

    @app.post("/predict", summary="Classify an uploaded scene", responses=responses)
    async def predict(
        request: Request,
        file: Upload,
        format: Format = "tif",
    ) -> Any:
        slot = _slot(request)
        job = await _accept(request, file, jobs)
        await asyncio.wrap_future(jobs.submit(job, slot))
        if job.status != "done":
            jobs.forget(job)
            raise HTTPException(500 if not jobs.closing else 503, job.error or "prediction failed")
        if format == "json":
            body = await run_in_threadpool(class_counts, job.output, meta)
            jobs.forget(job)
            return body
        return FileResponse(
            job.output,
            media_type="image/tiff",
            filename="map.tif",
            background=BackgroundTask(jobs.forget, job),
        )

    @app.post(
        "/jobs",
        status_code=202,
        summary="Submit a large scene for background prediction",
        responses=responses,
    )
    async def submit(
        request: Request,
        file: Upload,
        preview: Annotated[bool, Query(description="Also render PNG previews for the map page")] = False,
    ) -> dict[str, Any]:
        slot = _slot(request)
        job = await _accept(request, file, jobs)
        job.preview = preview
        jobs.submit(job, slot, background=True)
        return {**job.to_json(), "links": {"status": f"/jobs/{job.id}", "result": f"/jobs/{job.id}/result"}}

    def _job(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(
                404, f"no job {job_id} (unknown, or expired after {settings.keep_jobs} newer jobs)"
            )
        return job

    def _finished(job: Job) -> Job:
        if job.status == "failed":
            raise HTTPException(409, f"job {job.id} failed: {job.error}")
        if job.status != "done":
            raise HTTPException(
                409, f"job {job.id} is {job.status}; poll GET /jobs/{job.id} until it is done"
            )
        return job

    @app.get("/jobs/{job_id}", summary="Status and progress of a job")
    def job_status(job_id: JobId) -> dict[str, Any]:
        return _job(job_id).to_json()

    @app.get("/jobs/{job_id}/result", summary="Class map (GeoTIFF) or counts (JSON) of a finished job")
    async def job_result(job_id: JobId, format: Format = "tif") -> Any:
        job = _finished(_job(job_id))
        if format == "json":
            return await run_in_threadpool(class_counts, job.output, meta)
        return FileResponse(job.output, media_type="image/tiff", filename=f"map-{job.id}.tif")

    @app.get(
        "/jobs/{job_id}/preview", summary="Image and class map as PNGs in Web Mercator, for the map page"
    )
    async def job_preview(job_id: JobId) -> dict[str, Any]:
        job = _finished(_job(job_id))
        preview = job.folder / "preview.json"
        if not preview.is_file():
            raise HTTPException(409, f"job {job.id} has no preview (submit it with POST /jobs?preview=true)")
        body: dict[str, Any] = json.loads(preview.read_text())
        return body

    return app


def _check_port(host: str, port: int) -> None:
    """Fail in one line before loading the model when the address cannot be bound (uvicorn logs several)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InputError(
            f"--host {host}: not a usable address ({exc.strerror}); give e.g. 127.0.0.1"
        ) from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            raise InputError(
                f"{host}:{port}: cannot listen there ({exc.strerror}); choose another --port or stop the other server"
            ) from None


def run_server(model: str | Path, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve until SIGINT/SIGTERM; running jobs get ``settings.grace_s`` to finish."""
    import uvicorn

    _check_port(host, port)
    app = create_app(model, settings)
    uvicorn.run(
        app, host=host, port=port, log_level="info", timeout_graceful_shutdown=int(settings.grace_s) + 5
    )
