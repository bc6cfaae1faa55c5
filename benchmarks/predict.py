"""`eoforge predict` benchmarks, each printing ratios taken in one run on one machine.

    .venv/bin/python benchmarks/predict.py throughput [--size 1024] [--backend auto] [--rounds 3]  # vs model alone
    python benchmarks/predict.py throughput --device cuda --size 8000 --batch-size 32               # on a GPU
    .venv/bin/python benchmarks/predict.py backends [--size 1024]  # torch-fp32 vs torch vs auto: speed, agreement
    .venv/bin/python benchmarks/predict.py memory [--size 1000]    # peak RSS: square, tall (4x), wide (4x)
    .venv/bin/python benchmarks/predict.py extras [--size 1024]    # cost of probabilities, blending, TTA d4

The scene is a generated uint16 GeoTIFF (tiled 512, uncompressed) of smooth 16-px cells plus noise, whose
class is a fixed function of the cell's band values; the model a U-Net/resnet18 trained on other scenes of the
same generator for ``--train-steps`` steps (random init for ``memory``: weights do not change memory).
"Model alone" runs the pipeline's own batches of a few window rows of the scene, read into memory, cycled to the
scene's number of windows, alternating with pipeline runs (see ``throughput``). The memory runs
use the CLI in a child process with ``--blend hann --probabilities`` and read the child's own peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
from affine import Affine

from eoforge.models import create_model
from eoforge.package import ClassInfo, PackageMeta, Predictor, read_meta, save_package
from eoforge.predict import PredictOptions, predict
from eoforge.predict.backends import fast_precision, load_predictor
from eoforge.predict.blend import plan_bands
from eoforge.predict.engine import _probe, _row_batches, open_source, predict_scene


def _cells(rng: np.random.Generator, bands: int, h: int, w: int) -> np.ndarray:
    """Band values of smooth fields: cells of 16 px, uniform in 1000..9000, shape ``(bands, h/16, w/16)``."""
    return rng.integers(1000, 9000, (bands, -(-h // 16), -(-w // 16)))


def _classes(cells: np.ndarray, classes: int) -> np.ndarray:
    """The class of each cell: a fixed function of its band values (argmax of a fixed linear map), so a model
    can learn it."""
    weights = np.random.default_rng(42).standard_normal((classes, cells.shape[0]))
    return np.einsum("kb,bij->kij", weights, (cells - 5000) / 2900).argmax(axis=0)


def _block(rng: np.random.Generator, cells: np.ndarray, h: int, w: int) -> np.ndarray:
    """Pixels of the cells plus noise, uint16 ``(bands, h, w)``: closer to imagery than white noise."""
    block = np.kron(cells, np.ones((1, 16, 16), np.int64))[:, :h, :w]
    return (block + rng.integers(-500, 500, block.shape)).astype(np.uint16)


def make_scene(path: Path, height: int, width: int, bands: int) -> None:
    """A uint16 scene written block by block (tiled 512, uncompressed), so memory stays small."""
    rng = np.random.default_rng(0)
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": bands, "dtype": "uint16", "nodata": 0,
        "crs": "EPSG:32633", "transform": Affine(10, 0, 500000, 0, -10, 5000000),
        "tiled": True, "blockxsize": 512, "blockysize": 512,
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for r in range(0, height, 512):
            h = min(512, height - r)
            block = _block(rng, _cells(rng, bands, h, width), h, width)
            dst.write(block, window=rasterio.windows.Window(0, r, width, h))


def _meta(bands: int, classes: int, tile: int, overlap: int) -> PackageMeta:
    return PackageMeta(
        arch="unet", encoder="resnet18", bands=[f"b{i}" for i in range(bands)], mean=[5000.0] * bands,
        std=[2900.0] * bands, nodata=None, chip_size=tile // 2,
        classes=[ClassInfo(i + 1, f"c{i + 1}", "#808080") for i in range(classes)], tile=tile, overlap=overlap,
    )  # fmt: skip


def make_package(path: Path, bands: int, classes: int, tile: int, overlap: int) -> Path:
    """A random-init U-Net package (enough for the memory runs: weights do not change memory)."""
    torch.manual_seed(0)
    model = create_model("unet", bands, classes, "resnet18")
    return save_package(path, model, _meta(bands, classes, tile, overlap), {"benchmark": True})


def train_package(path: Path, args: argparse.Namespace) -> Path:
    """The same U-Net trained on scenes of the benchmark's generator, whose classes are a function of the
    bands (:func:`_classes`): a random-init model has near-tied logits everywhere, which says nothing about how
    often reduced precision changes the class of a trained model. Trains ``args.train_steps`` steps of 16 chips
    of 64 px (bf16 autocast where the CPU has it, for speed; the package holds fp32 weights) and prints the
    pixel accuracy on chips it did not train on."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)  # not the benchmark scene's seed
    model = create_model("unet", args.bands, args.classes, "resnet18").train()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.train_steps)
    bf16 = fast_precision(torch.device("cpu")) == "bf16"

    def chips(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        cells = _cells(rng, args.bands, 64 * n, 64)  # n chips of 64 x 64 stacked vertically
        x = (_block(rng, cells, 64 * n, 64).astype(np.float32) - 5000) / 2900
        y = np.kron(_classes(cells, args.classes), np.ones((16, 16), np.int64))
        xt = torch.from_numpy(x.reshape(args.bands, n, 64, 64).transpose(1, 0, 2, 3).copy())
        return xt.contiguous(memory_format=torch.channels_last), torch.from_numpy(y.reshape(n, 64, 64))

    t0 = time.perf_counter()
    for _ in range(args.train_steps):
        x, y = chips(16)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    x, y = chips(32)
    with torch.inference_mode():
        acc = float((model(x).argmax(1) == y).float().mean())
    print(f"trained U-Net: {args.train_steps} steps of 16 chips in {time.perf_counter() - t0:.0f} s, "
          f"pixel accuracy {100 * acc:.1f} % on unseen chips")  # fmt: skip
    return save_package(
        path, model, _meta(args.bands, args.classes, args.tile, args.overlap), {"benchmark": True}
    )


def _trained(tmp: Path, args: argparse.Namespace) -> Path:
    """The trained package: from ``--model-cache`` when it holds one, else trained (and kept there if given)."""
    cache = args.model_cache
    if cache is not None and (cache / "eoforge.json").is_file():
        meta = read_meta(cache)
        if (len(meta.bands), len(meta.classes)) != (args.bands, args.classes):
            sys.exit(
                f"{cache}: a model of {len(meta.bands)} bands and {len(meta.classes)} classes; remove it"
            )
        print(f"trained U-Net: reused from {cache}")
        return Path(cache)
    return train_package(cache if cache is not None else tmp / "model", args)


def _sample_batches(scene: Path, pkg: Path, args: argparse.Namespace) -> list[np.ndarray]:
    """The pipeline's own batches (:func:`eoforge.predict.engine._row_batches`) of ``--alone-rows`` window rows
    spread over the scene, read into memory: "model alone" runs on real windows (the content of a batch, like
    a trained model's activations on it, is what the pipeline feeds), cycled to the scene's number of windows."""
    plan = plan_bands(args.size, args.size, args.tile, args.overlap, "center")
    n = len(plan.rows)
    rows = sorted({round(i * (n - 1) / max(1, args.alone_rows - 1)) for i in range(args.alone_rows)})
    source = open_source([scene], read_meta(pkg))
    try:
        return [
            b
            for k in rows
            for _, _, b, _ in _row_batches(source, plan, k, k + 1, args.batch_size, {"skipped": 0})
            if b is not None
        ]
    finally:
        source.close()


def model_alone(predictor: Predictor, sample: list[np.ndarray], args: argparse.Namespace) -> Run:
    """The predictor alone on in-memory batches: as many window rows as the scene has, each the batches of a
    sampled row (:func:`_sample_batches`), the same calls as the pipeline's class-map path (``predict_index``:
    normalisation, channels-last copy, the model, argmax)."""
    plan = plan_bands(args.size, args.size, args.tile, args.overlap, "center")
    per_row = -(-len(plan.cols) // args.batch_size)
    rows = [sample[i : i + per_row] for i in range(0, len(sample), per_row)]
    t0, c0 = time.perf_counter(), os.times()
    for k in range(len(plan.rows)):
        for batch in rows[k % len(rows)]:
            predictor.predict_index(batch)
    c1 = os.times()
    return Run(args.size**2, time.perf_counter() - t0, c1.user - c0.user, c1.system - c0.system, {})


@dataclass
class Run:
    """One timed run: pixels, wall seconds, process user and system CPU seconds, CPU seconds by part."""

    pixels: int
    wall: float
    user: float
    sys: float
    parts: dict[str, float]

    @property
    def rate(self) -> float:
        return self.pixels / self.wall

    @property
    def cpu(self) -> float:
        return self.user + self.sys

    def line(self) -> str:
        return f"{self.rate / 1e6:.3f} MP/s ({self.wall:.1f} s wall; CPU {self.cpu:.1f} s = user {self.user:.1f} + sys {self.sys:.1f})"


def _pipeline(predictor: Predictor, scene: Path, out: Path, args: argparse.Namespace) -> Run:
    t0, c0 = time.perf_counter(), os.times()
    r = predict_scene(predictor, [scene], out, options=_opts(args))
    c1 = os.times()
    return Run(
        args.size**2,
        time.perf_counter() - t0,
        c1.user - c0.user,
        c1.system - c0.system,
        getattr(r, "cpu_seconds", {}),
    )


def throughput(tmp: Path, scene: Path, pkg: Path, args: argparse.Namespace) -> None:
    """The pipeline (``predict_scene``: reading to COG) against the model alone on in-memory batches of the
    scene's windows, same predictor (auto: same choice), same process, same torch threads. The model is first
    warmed up on one window row's batches (oneDNN kernels of each batch shape); the first pipeline run then
    still pays the process's lazy imports and GDAL set-up ("cold"); then ``--rounds`` rounds alternate model alone and pipeline, so a change of machine load hits
    both, and the ratios use their medians: of wall-clock rates and of process CPU seconds (user + system,
    all threads), which other processes on a shared machine disturb less, provided OpenMP threads sleep
    instead of spinning while a teammate waits for a core: on a loaded machine set ``OMP_WAIT_POLICY=PASSIVE``
    (under load 8 the default policy counted 195 s of CPU for an 8000² run that takes 56 s idle). The pipeline's CPU by part comes from
    ``PredictResult.cpu_seconds``; its ``model`` part against the model alone's CPU says how much more the same
    model calls cost inside the pipeline (the reader thread shares the cores)."""
    source = open_source([scene], read_meta(pkg))
    probe = _probe(source, args.tile)  # what `predict` gives `auto` to check its agreement on
    source.close()
    predictor = load_predictor(pkg, backend=args.backend, device=args.device, probe=probe)
    sample = _sample_batches(scene, pkg, args)
    plan = plan_bands(args.size, args.size, args.tile, args.overlap, "center")
    for b in sample[: -(-len(plan.cols) // args.batch_size)]:
        predictor.predict_index(b)  # warm-up: oneDNN kernels of the batch shapes
    cold = _pipeline(predictor, scene, tmp / "cold.tif", args)
    print(f"pipeline cold: {cold.line()}")
    alone: list[Run] = []
    pipe: list[Run] = []
    for i in range(args.rounds):
        alone.append(model_alone(predictor, sample, args))
        pipe.append(_pipeline(predictor, scene, tmp / "warm.tif", args))
        print(f"round {i + 1}: model alone {alone[-1].line()}; pipeline {pipe[-1].line()} "
              f"(load {os.getloadavg()[0]:.1f})")  # fmt: skip
    med = statistics.median
    a_rate, p_rate = med(r.rate for r in alone), med(r.rate for r in pipe)
    a_cpu, p_cpu = med(r.cpu for r in alone), med(r.cpu for r in pipe)
    a_user, p_user = med(r.user for r in alone), med(r.user for r in pipe)
    parts = {k: med(r.parts.get(k, 0.0) for r in pipe) for k in pipe[0].parts}
    print(f"pipeline ({predictor.backend}, {args.rounds} rounds, medians): {p_rate / 1e6:.3f} MP/s; model alone "
          f"{a_rate / 1e6:.3f} MP/s (model-alone rates {', '.join(f'{r.rate / 1e6:.3f}' for r in alone)})")  # fmt: skip
    print("pipeline CPU by part (s): " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()))
    print(f"model calls inside the pipeline {parts.get('model', 0):.1f} s CPU vs model alone {a_cpu:.1f} s: "
          f"{parts.get('model', 0) / a_cpu:.3f}x; outside the model: "
          f"{parts.get('total', 0) - parts.get('model', 0):.1f} s ({100 * (1 - parts.get('model', 0) / max(parts.get('total', 1), 1e-9)):.1f} %)")  # fmt: skip
    print(f"ratio pipeline / model alone: wall {p_rate / a_rate:.2f} (cold {cold.rate / a_rate:.2f}); "
          f"CPU {a_cpu / p_cpu:.2f}; user time {a_user / p_user:.2f}")  # fmt: skip


def backends(tmp: Path, scene: Path, pkg: Path, args: argparse.Namespace) -> None:
    """Each backend's pipeline rate (``PredictResult``: reading to COG) and the wall time of the whole
    ``predict`` call, which adds loading the package and, for ``auto``, its agreement probe."""
    for backend in ("torch-fp32", "torch"):  # warm-up (kernel set-up)
        predict(pkg, [scene], tmp / "warm.tif", backend=backend, options=_opts(args))
    t0 = time.perf_counter()
    ref = predict(pkg, [scene], tmp / "fp32.tif", backend="torch-fp32", options=_opts(args))
    ref_wall = time.perf_counter() - t0
    a = rasterio.open(ref.path).read(1)
    print(f"torch-fp32 (plain fp32 eager): {ref.pixels_per_second / 1e6:.3f} MP/s ({ref.seconds:.1f} s; "
          f"{ref_wall:.1f} s with loading)")  # fmt: skip
    for backend in ("torch", "auto"):
        t0 = time.perf_counter()
        res = predict(pkg, [scene], tmp / f"{backend}.tif", backend=backend, options=_opts(args))
        wall = time.perf_counter() - t0
        agree = 100 * float((rasterio.open(res.path).read(1) == a).mean())
        print(f"{backend} ({res.backend}, channels-last): {res.pixels_per_second / 1e6:.3f} MP/s "
              f"({res.seconds:.1f} s), speed-up {res.pixels_per_second / ref.pixels_per_second:.2f}x "
              f"({ref_wall / wall:.2f}x with loading{' and probe' if backend == 'auto' else ''}: {wall:.1f} s), "
              f"class map agrees with fp32 on {agree:.3f} % of pixels")  # fmt: skip


def extras(tmp: Path, scene: Path, pkg: Path, args: argparse.Namespace) -> None:
    predict(pkg, [scene], tmp / "a.tif", backend=args.backend, options=_opts(args))  # warm-up (kernel set-up)
    base = predict(pkg, [scene], tmp / "a.tif", backend=args.backend, options=_opts(args))
    runs = {
        "probabilities uint8 + uncertainty": _opts(args, probabilities="uint8", uncertainty="entropy"),
        "blend hann + probabilities": _opts(args, blend="hann", probabilities="uint8"),
        "tta d4": _opts(args, tta="d4"),
    }
    print(f"baseline (center, class map only, {base.backend}): {base.seconds:.1f} s")
    for name, opts in runs.items():
        res = predict(pkg, [scene], tmp / "b.tif", backend=args.backend, options=opts)
        print(f"{name}: {res.seconds:.1f} s, cost ratio {res.seconds / base.seconds:.2f}x")


def memory(tmp: Path, args: argparse.Namespace) -> None:
    pkg = make_package(tmp / "model", args.bands, args.classes, args.tile, args.overlap)
    peaks = {}
    shapes = {
        "square": (args.size, args.size),
        "tall": (4 * args.size, args.size),
        "wide": (args.size, 4 * args.size),
    }
    for name, (h, w) in shapes.items():
        scene = tmp / f"{name}.tif"
        make_scene(scene, h, w, args.bands)
        child = (
            "import json, resource, sys; from eoforge.cli import main; main(sys.argv[1:]); "
            "print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))"
        )
        cmd = [sys.executable, "-c", child, "-q", "predict", str(pkg), str(scene), "-o", str(tmp / f"{name}_map.tif"),
               "--blend", "hann", "--probabilities", "--batch-size", str(args.batch_size), "--backend", args.backend]  # fmt: skip
        t0 = time.perf_counter()
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        peaks[name] = json.loads(out.strip().splitlines()[-1]) / 1024
        print(f"{name} {w} x {h}: peak RSS {peaks[name]:.0f} MiB ({time.perf_counter() - t0:.1f} s)")
        scene.unlink()
    print(
        f"tall / square: {peaks['tall'] / peaks['square']:.2f}   wide / square: {peaks['wide'] / peaks['square']:.2f}"
    )


def _opts(args: argparse.Namespace, **kw: str) -> PredictOptions:
    return PredictOptions(tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, **kw)  # type: ignore[arg-type]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["throughput", "backends", "memory", "extras"])
    ap.add_argument("--size", type=int, default=1024, help="scene side in pixels (memory: the square scene)")
    ap.add_argument("--bands", type=int, default=4)
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--overlap", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=300, help="training steps of the benchmark's model")
    ap.add_argument("--model-cache", type=Path, help="folder keeping the trained package between runs")
    ap.add_argument(
        "--rounds", type=int, default=3, help="throughput: alternating model-alone/pipeline rounds"
    )
    ap.add_argument(
        "--alone-rows", type=int, default=4, help="throughput: window rows read for the model alone"
    )
    ap.add_argument("--backend", choices=["auto", "torch", "torch-fp32", "onnx"], default="auto")
    ap.add_argument("--device", default="cpu", help="throughput: torch device of the predictor (cpu, cuda)")
    args = ap.parse_args()
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs")
    print(f"{args.what}: {args.size} px, {args.bands} bands uint16, unet/resnet18, tile {args.tile}, overlap "
          f"{args.overlap}, batch {args.batch_size}, backend {args.backend}, torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        if args.what == "memory":
            memory(tmp, args)
            return
        scene = tmp / "scene.tif"
        make_scene(scene, args.size, args.size, args.bands)
        pkg = _trained(tmp, args)
        {"throughput": throughput, "backends": backends, "extras": extras}[args.what](tmp, scene, pkg, args)
    print(f"load average {' '.join(f'{v:.1f}' for v in os.getloadavg())} at the end")


if __name__ == "__main__":
    main()
