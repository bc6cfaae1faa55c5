"""Load test of `eoforge serve`: concurrent clients on `POST /predict` plus a few large background jobs.

    .venv/bin/python benchmarks/serve.py [--clients 50] [--duration 60] [--size 64] [--jobs 3] [--job-size 1024]

Starts `eoforge serve` in a child process on 127.0.0.1 with a U-Net/resnet18 package (random weights), warms
it up, reads the server's RSS, then runs ``--clients`` concurrent clients posting small GeoTIFF scenes for
``--duration`` seconds while ``--jobs`` large scenes go through `POST /jobs` and are polled to the end. Prints
status counts (5xx must be 0), p50/p99 latency, requests/s, lost jobs (must be 0) and the server's RSS after
the run relative to before (target: within 10 %). The queue is sized to the clients so admission never
refuses (503) in this test; `tests/test_serve.py` covers the 503 path.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import rasterio
import torch
from affine import Affine

from eoforge.models import create_model
from eoforge.package import ClassInfo, PackageMeta, save_package


def scene_bytes(size: int, bands: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff", "width": size, "height": size, "count": bands, "dtype": "uint16", "nodata": 0,
        "crs": "EPSG:32633", "transform": Affine(10, 0, 500000, 0, -10, 5000000),
    }  # fmt: skip
    with rasterio.MemoryFile() as mem:
        with mem.open(**profile) as dst:
            dst.write(rng.integers(1, 10000, (bands, size, size), dtype=np.uint16))
        return bytes(mem.read())


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def client_loop(
    http: httpx.AsyncClient, body: bytes, until: float, lat: list[float], codes: dict[int, int]
) -> None:
    while time.monotonic() < until:
        t0 = time.perf_counter()
        try:
            r = await http.post("/predict", files={"file": ("s.tif", body, "image/tiff")})
            code = r.status_code
        except httpx.HTTPError:
            code = -1  # connection-level failure: counted, never hidden
        lat.append(time.perf_counter() - t0)
        codes[code] = codes.get(code, 0) + 1


async def run_job(http: httpx.AsyncClient, body: bytes, size: int) -> str:
    r = await http.post("/jobs", files={"file": ("big.tif", body, "image/tiff")})
    if r.status_code != 202:
        return f"submit {r.status_code}"
    job = r.json()["id"]
    while True:
        state = (await http.get(f"/jobs/{job}")).json()
        if state["status"] in ("done", "failed"):
            break
        await asyncio.sleep(0.5)
    if state["status"] != "done":
        return f"failed: {state['error']}"
    res = await http.get(f"/jobs/{job}/result")
    with rasterio.MemoryFile(res.content) as mem, mem.open() as src:
        ok = src.shape == (size, size) and src.read(1).max() < 255
    return "ok" if ok else "bad result"


async def _one_job(base: str, body: bytes, size: int) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=300) as http:
        result = await run_job(http, body, size)
    if result != "ok":
        raise SystemExit(f"warm-up job: {result}")


async def load(args: argparse.Namespace, base: str) -> dict[str, object]:
    small = scene_bytes(args.size, args.bands, 1)
    big = scene_bytes(args.job_size, args.bands, 2)
    lat: list[float] = []
    codes: dict[int, int] = {}
    limits = httpx.Limits(max_connections=args.clients + args.jobs + 4)
    async with httpx.AsyncClient(base_url=base, timeout=300, limits=limits) as http:
        t0 = time.monotonic()
        until = t0 + args.duration
        jobs = [asyncio.create_task(run_job(http, big, args.job_size)) for _ in range(args.jobs)]
        await asyncio.gather(*(client_loop(http, small, until, lat, codes) for _ in range(args.clients)))
        wall = time.monotonic() - t0
        job_results = await asyncio.gather(*jobs)
    return {"lat": lat, "codes": codes, "wall": wall, "jobs": job_results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--size", type=int, default=64, help="side of the small scenes sent to /predict")
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument("--job-size", type=int, default=1024, help="side of the large scenes sent to /jobs")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        meta = PackageMeta(
            arch="unet", encoder="resnet18", bands=[f"b{i}" for i in range(args.bands)],
            mean=[5000.0] * args.bands, std=[2900.0] * args.bands, nodata=0, chip_size=64,
            classes=[ClassInfo(i + 1, f"c{i + 1}", "#336699") for i in range(5)], tile=256, overlap=32,
        )  # fmt: skip
        model = create_model("unet", args.bands, 5, "resnet18")
        pkg = save_package(Path(tmp) / "model", model, meta, {}, onnx=False)
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        queue = args.clients + args.jobs
        cmd = [sys.executable, "-m", "eoforge.cli", "-q", "serve", str(pkg), "--port", str(port)]
        cmd += ["--workers", str(args.workers), "--job-workers", "1", "--queue", str(queue)]
        cmd += ["--max-upload-mb", "512"]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(base + "/health", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            else:
                raise SystemExit("server did not start")
            warm = scene_bytes(args.size, args.bands, 0)
            for _ in range(20):  # warm-up: model buffers, allocator arenas, first imports
                httpx.post(base + "/predict", files={"file": ("w.tif", warm, "image/tiff")}, timeout=120)
            if args.jobs:  # and one large job: GDAL block cache, window batches of full tiles
                asyncio.run(_one_job(base, scene_bytes(args.job_size, args.bands, 3), args.job_size))
            before = rss_mib(server.pid)
            res = asyncio.run(load(args, base))
            time.sleep(1.0)
            after = rss_mib(server.pid)
            health = httpx.get(base + "/health", timeout=10).json()
        finally:
            server.terminate()
            try:
                _, err = server.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                _, err = server.communicate()

    lat = np.array(res["lat"])  # type: ignore[arg-type]
    codes: dict[int, int] = res["codes"]  # type: ignore[assignment]
    n5xx = sum(v for k, v in codes.items() if k >= 500 or k < 0)
    lost = sum(1 for j in res["jobs"] if j != "ok")  # type: ignore[attr-defined]
    print(f"clients {args.clients}, {args.duration:.0f} s, {args.size}^2 x {args.bands} scenes to /predict; "
          f"{args.jobs} jobs of {args.job_size}^2; server workers {args.workers}")  # fmt: skip
    print(f"requests {len(lat)}  status {dict(sorted(codes.items()))}  5xx {n5xx}")
    print(f"latency p50 {np.percentile(lat, 50) * 1e3:.0f} ms  p99 {np.percentile(lat, 99) * 1e3:.0f} ms  "
          f"req/s {len(lat) / res['wall']:.1f}")  # type: ignore[operator]  # fmt: skip
    print(f"jobs {res['jobs']}  lost {lost}")
    print(f"server RSS before {before:.0f} MiB  after {after:.0f} MiB  ratio {after / before:.3f}")
    print(f"server after run: {health}; exit code {server.returncode}")
    if err.strip():
        print("server stderr (last lines):", *err.decode(errors="replace").splitlines()[-5:], sep="\n  ")


if __name__ == "__main__":
    main()
