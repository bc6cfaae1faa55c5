"""``eoforge serve``: every endpoint and error through FastAPI's TestClient (httpx)."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import TRANSFORM, write_tif
from fastapi.testclient import TestClient
from helpers import PickBand0, identity_package

from eoforge.models import list_models, register_model
from eoforge.package import ClassInfo, PackageMeta, save_package
from eoforge.serve import ServeSettings, create_app

GATE = threading.Event()


class _Gated(PickBand0):
    """PickBand0 that waits for GATE: keeps a worker busy as long as a test needs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        GATE.wait(timeout=20)
        return super().forward(x)


if "test-gated" not in list_models():
    register_model("test-gated")(lambda c, k, enc: _Gated(c, k))


def _scene(tmp_path: Path, bands: int = 2, name: str = "scene.tif") -> Path:
    """Band 0 holds the class index 0/1/2 in three vertical stripes, so the map is known: ids 10/20/30."""
    a = np.zeros((bands, 64, 96), np.float32)
    a[0] = np.repeat(np.arange(96)[None, :] // 32, 64, 0)
    return write_tif(tmp_path / name, a)


def _client(pkg: Path, **settings: object) -> TestClient:
    return TestClient(create_app(pkg, ServeSettings(**settings)))  # type: ignore[arg-type]


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    return identity_package(tmp_path / "model", bands=2)


@pytest.fixture
def client(pkg: Path) -> Iterator[TestClient]:
    with _client(pkg) as c:
        yield c


def _upload(path: Path) -> dict[str, tuple[str, bytes, str]]:
    return {"file": (path.name, path.read_bytes(), "image/tiff")}


def _expected_map() -> np.ndarray:
    return np.repeat((np.arange(96)[None, :] // 32 + 1) * 10, 64, 0)


def test_health_model_docs(client: TestClient) -> None:
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == "test-pick-band0/none" and h["capacity"] == 11
    item = client.get("/model").json()
    assert item["type"] == "Feature" and item["properties"]["mlm:input"][0]["bands"] == ["b0", "b1"]
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/predict", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/result", "/health", "/model"} <= set(paths)
    assert "multipart/form-data" in paths["/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_predict_returns_the_class_map_geotiff(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/predict", files=_upload(_scene(tmp_path)))
    assert r.status_code == 200 and r.headers["content-type"] == "image/tiff"
    with rasterio.open(io.BytesIO(r.content)) as src:
        assert src.transform == TRANSFORM and src.crs.to_string() == "EPSG:32633"
        assert np.array_equal(src.read(1), _expected_map())
    assert list(client.app.state.jobs.root.iterdir()) == []  # type: ignore[attr-defined]  (cleaned up)


def test_predict_json_counts_and_areas(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/predict?format=json", files=_upload(_scene(tmp_path)))
    assert r.status_code == 200
    body = r.json()
    assert [(c["id"], c["pixels"], c["area_ha"]) for c in body["classes"]] == [
        (10, 2048, 20.48),  # 32 x 64 pixels of 10 m x 10 m = 100 m^2 each
        (20, 2048, 20.48),
        (30, 2048, 20.48),
    ]
    assert body["pixel_area_m2"] == 100.0 and body["nodata_pixels"] == 0


def test_upload_over_the_limit_is_413(pkg: Path, tmp_path: Path) -> None:
    big = write_tif(tmp_path / "big.tif", np.random.default_rng(0).random((2, 512, 512), dtype=np.float32))
    assert big.stat().st_size > 1024 * 1024
    with _client(pkg, max_upload_mb=1) as c:
        r = c.post("/predict", files=_upload(big))
        assert r.status_code == 413 and "larger than 1 MiB" in r.json()["detail"]
        # a chunked upload (no Content-Length) is cut off while streaming
        body, ctype = _multipart(big.read_bytes())
        r = c.post("/jobs", content=_chunks(body), headers={"content-type": ctype})
        assert r.status_code == 413
        assert c.get("/health").json()["admitted"] == 0  # slots given back
        assert c.post("/predict", files=_upload(_scene(tmp_path))).status_code == 200


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "eoforgeboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.tif"\r\n'
        "Content-Type: image/tiff\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _chunks(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 64 * 1024):
        yield data[i : i + 64 * 1024]


def test_not_a_raster_is_415_and_wrong_bands_422(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/predict", files={"file": ("notes.tif", b"hello, not a raster", "image/tiff")})
    assert r.status_code == 415 and "not a raster" in r.json()["detail"]
    r = client.post("/jobs", files=_upload(_scene(tmp_path, bands=3)))
    assert r.status_code == 422 and "has 3 bands but the model needs 2 (b0, b1)" in r.json()["detail"]
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=8, height=8, count=2, dtype="float32") as dst:
        dst.write(np.zeros((2, 8, 8), np.float32))
    r = client.post("/predict", files=_upload(nocrs))
    assert r.status_code == 422 and "no CRS" in r.json()["detail"]
    assert client.post("/predict").status_code == 422  # no file field
    assert list(client.app.state.jobs.root.iterdir()) == []  # type: ignore[attr-defined]


def test_client_file_names_never_touch_the_file_system(client: TestClient, tmp_path: Path) -> None:
    data = _scene(tmp_path).read_bytes()
    for name in ("../../escape.tif", "/tmp/abs-escape.tif", "..\\win.tif"):
        r = client.post("/jobs", files={"file": (name, data, "image/tiff")})
        assert r.status_code == 202
        _wait(client, r.json()["id"])
    root = client.app.state.jobs.root  # type: ignore[attr-defined]
    found = [p.name for p in root.rglob("*")] + [p.name for p in root.parent.glob("*escape*")]
    assert not any("escape" in n or "win" in n for n in found)
    assert not Path("/tmp/abs-escape.tif").exists()


def _wait(client: TestClient, job_id: str, timeout: float = 30) -> dict:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        state = client.get(f"/jobs/{job_id}").json()
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def test_jobs_progress_result_json_and_preview(client: TestClient, tmp_path: Path) -> None:
    r = client.post("/jobs?preview=true", files=_upload(_scene(tmp_path)))
    assert r.status_code == 202
    job = r.json()
    assert (
        job["status"] in ("queued", "running", "done")
        and job["links"]["result"] == f"/jobs/{job['id']}/result"
    )
    state = _wait(client, job["id"])
    assert state["status"] == "done" and state["progress"]["fraction"] == 1.0
    assert state["progress"]["windows_done"] == state["progress"]["windows_total"] > 0
    r = client.get(f"/jobs/{job['id']}/result")
    with rasterio.open(io.BytesIO(r.content)) as src:
        assert np.array_equal(src.read(1), _expected_map())
    counts = client.get(f"/jobs/{job['id']}/result?format=json").json()
    assert [c["pixels"] for c in counts["classes"]] == [2048, 2048, 2048]
    preview = client.get(f"/jobs/{job['id']}/preview").json()
    (south, west), (north, east) = preview["bounds"]
    assert 45.0 < south < north < 45.2 and 14.9 < west < east < 15.1  # UTM 33N at (500 km, 5000 km)
    assert preview["map"].startswith("data:image/png;base64,") and preview["image"].startswith(
        "data:image/png"
    )
    assert [c["name"] for c in preview["legend"]] == ["class10", "class20", "class30"]


def test_unknown_and_malformed_job_ids(client: TestClient) -> None:
    assert client.get(f"/jobs/{'0' * 32}").status_code == 404
    assert client.get(f"/jobs/{'0' * 32}/result").status_code == 404
    assert client.get("/jobs/..%2F..%2Fetc%2Fpasswd").status_code in (404, 422)
    assert client.get("/jobs/not-a-job-id/result").status_code == 422


def _gated_package(path: Path) -> Path:
    meta = PackageMeta(
        arch="test-gated",
        encoder="none",
        bands=["b0", "b1"],
        mean=[0.0, 0.0],
        std=[1.0, 1.0],
        nodata=None,
        chip_size=32,
        classes=[ClassInfo(c, f"class{c}", "#112233") for c in (10, 20, 30)],
        tile=64,
        overlap=16,
    )
    GATE.set()  # the ONNX export traces forward once
    try:
        return save_package(path, _Gated(2, 3), meta, {}, onnx=False)
    finally:
        GATE.clear()


def test_queue_full_is_503_with_retry_after_and_running_result_is_409(tmp_path: Path) -> None:
    pkg = _gated_package(tmp_path / "gated")
    scene = _scene(tmp_path)
    GATE.clear()
    try:
        with _client(pkg, workers=1, job_workers=1, queue=0, retry_after_s=7) as c:
            first = c.post("/jobs", files=_upload(scene)).json()["id"]
            second = c.post("/jobs", files=_upload(scene)).json()["id"]
            r = c.post("/predict", files=_upload(scene))
            assert r.status_code == 503 and r.headers["retry-after"] == "7"
            assert c.post("/jobs", files=_upload(scene)).status_code == 503
            assert c.get(f"/jobs/{first}/result").status_code == 409
            assert c.get(f"/jobs/{second}").json()["status"] == "queued"
            GATE.set()
            assert _wait(c, first)["status"] == "done" and _wait(c, second)["status"] == "done"
            assert c.post("/predict", files=_upload(scene)).status_code == 200
    finally:
        GATE.set()


def test_shutdown_fails_unfinished_jobs_cleanly(tmp_path: Path) -> None:
    pkg = _gated_package(tmp_path / "gated")
    scene = _scene(tmp_path)
    GATE.clear()
    try:
        c = _client(pkg, workers=1, queue=2, grace_s=0.3)
        with c:
            ids = [c.post("/jobs", files=_upload(scene)).json()["id"] for _ in range(2)]
            manager = c.app.state.jobs  # type: ignore[attr-defined]
            root = manager.root
            # the running job is released only once the grace time is over and cancellation has begun
            threading.Thread(target=lambda: (manager._cancel.wait(30), GATE.set()), daemon=True).start()
        states = [manager.get(i) for i in ids]
        assert all(s.status == "failed" and "shut down" in s.error for s in states), [
            s.status for s in states
        ]
        assert not root.exists()  # nothing left behind
        assert not list(tmp_path.glob("**/.map.tif.*.tmp"))
    finally:
        GATE.set()


def test_shutdown_lets_a_job_finish_within_the_grace_time(tmp_path: Path, pkg: Path) -> None:
    c = _client(pkg, grace_s=20)
    with c:
        job_id = c.post("/jobs", files=_upload(_scene(tmp_path))).json()["id"]
        manager = c.app.state.jobs  # type: ignore[attr-defined]
    assert manager.get(job_id).status == "done"


def test_serve_on_a_busy_port_is_one_line(pkg: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    from eoforge.cli import main

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(["serve", str(pkg), "--port", str(port)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"127.0.0.1:{port}: cannot listen there" in err, err
