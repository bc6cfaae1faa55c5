"""Training throughput: samples/s of fp32 eager against `train.precision: auto` on the demo U-Net, one run.

The demo's model (its `model.arch` / `encoder` / `encoder_depth`, 6 bands, 7 classes, its chip size and batch,
read from `eoforge.demo.demo_config()`) trains on random batches with the demo's loss and the optimiser of `SegmentationTask`
(`make_optimizer`: fused AdamW), exactly as the task does: forward, loss, backward, optimiser step. Steady
state: each setting first runs ``--warmup`` steps that are not timed (oneDNN creates its kernels and the
allocator its pools on the first steps), then the two settings alternate round by round (``--steps`` each), so
load changes on a shared machine hit both alike; the ratio of the medians is printed, with the load average
before and after (compare only runs on an idle machine: under oversubscription OpenMP threads wait on each
other and the ratio says nothing about the setting).

    OMP_NUM_THREADS=2 python benchmarks/train.py [--rounds 7 --steps 8 --warmup 5] [--encoder-depth 5] [--loss ce+dice]
    python benchmarks/train.py --device cuda [--batch 256] [--also bf16-mixed]   # on a GPU: 16-mixed is auto there

On CUDA each round ends with ``torch.cuda.synchronize()`` (kernels run asynchronously), 16-mixed uses a
``GradScaler`` as Lightning's does, and "fp32" is PyTorch's default float32 (TF32 for convolutions via cuDNN).

The Lovasz loss (the demo's since 2026-11-23) was smp's, which sorts every class's pixel errors: ~30 ms per
batch of 16 on 2 cores whatever the precision (ratio 1.95x); eoforge's sort-free version costs ~5 ms (2.53x).
``--loss ce+dice`` times the model's step with a cheap loss.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time

import torch

from eoforge.config import CE_LOSSES, ModelConfig, TrainConfig
from eoforge.demo import demo_config
from eoforge.models import create_model
from eoforge.train.losses import make_loss
from eoforge.train.speed import resolve_precision
from eoforge.train.task import make_optimizer


def make_step(  # type: ignore[no-untyped-def]
    precision: str,
    bands: int,
    classes: int,
    model_cfg: ModelConfig,
    loss: str,
    compile: bool = False,
    device: str = "cpu",
):
    plan = resolve_precision(precision, "cuda" if device.startswith("cuda") else "cpu")
    torch.manual_seed(0)
    m = model_cfg
    model = create_model(m.arch, bands, classes, m.encoder, encoder_depth=m.encoder_depth).to(device).train()
    if plan.channels_last:
        model = model.to(memory_format=torch.channels_last)
    fwd = torch.compile(model) if compile else model
    opt = make_optimizer(model.parameters(), 1e-3, 1e-4)
    weights = [1.0] * classes
    weighted = loss in CE_LOSSES  # the demo's class weights apply to the cross-entropy losses only
    train_cfg = TrainConfig(loss=loss, class_weights=weights if weighted else None)  # type: ignore[arg-type]
    loss_fn = make_loss(train_cfg, weights if weighted else None).to(device)
    dev_type = torch.device(device).type
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(plan.precision)
    # fp16 needs loss scaling (as Lightning's 16-mixed does); bf16 does not
    scaler = torch.amp.GradScaler(dev_type, enabled=plan.precision == "16-mixed")

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if plan.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ctx = torch.autocast(dev_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with ctx:
            loss = loss_fn(fwd(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return step, plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=8, help="Training steps per round and setting.")
    ap.add_argument("--warmup", type=int, default=5, help="Untimed steps per setting before the rounds.")
    ap.add_argument("--batch", type=int, default=None, help="Default: the demo's train.batch_size.")
    ap.add_argument("--size", type=int, default=None, help="Default: the demo's chips.size.")
    ap.add_argument(
        "--encoder-depth", type=int, default=None, help="Default: the demo's model.encoder_depth."
    )
    ap.add_argument(
        "--loss", default=None, help="Default: the demo's train.loss (e.g. ce+dice to time the model)."
    )
    ap.add_argument("--compile", action="store_true", help="Also torch.compile the auto setting.")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (auto then means 16-mixed).")
    ap.add_argument(
        "--also", action="append", default=[], help="Another precision to time too (e.g. bf16-mixed)."
    )
    args = ap.parse_args()
    demo = demo_config()
    bands, classes = len(demo.inputs.bands or []), len(demo.inputs.classes or {})
    args.batch = args.batch or demo.train.batch_size
    args.size = args.size or demo.chips.size
    model_cfg = demo.model
    if args.encoder_depth is not None:
        model_cfg = model_cfg.model_copy(update={"encoder_depth": args.encoder_depth})
    loss = args.loss or demo.train.loss
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, bands, args.size, args.size, generator=g).to(args.device)
    y = torch.randint(0, classes, (args.batch, args.size, args.size), generator=g).to(args.device)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    settings = {"fp32 eager": make_step("32-true", bands, classes, model_cfg, loss, device=args.device)}
    auto_step, plan = make_step(
        "auto", bands, classes, model_cfg, loss, compile=args.compile, device=args.device
    )
    auto_name = (
        f"auto ({plan.precision}, channels-last {plan.channels_last}{', compiled' if args.compile else ''})"
    )
    settings[auto_name] = (auto_step, plan)
    for prec in args.also:
        settings[f"{prec}"] = make_step(prec, bands, classes, model_cfg, loss, device=args.device)
    rates: dict[str, list[float]] = {k: [] for k in settings}
    load0 = os.getloadavg()
    for step, _ in settings.values():  # warm-up (oneDNN primitive caches, allocator pools, compilation)
        for _ in range(args.warmup):
            step(x, y)
    sync()
    for _ in range(args.rounds):
        for name, (step, _) in settings.items():
            t = time.perf_counter()
            for _ in range(args.steps):
                step(x, y)
            sync()
            rates[name].append(args.steps * args.batch / (time.perf_counter() - t))
    load1 = os.getloadavg()
    print(
        f"demo model {model_cfg.arch}/{model_cfg.encoder}, encoder_depth {model_cfg.encoder_depth or 'default'}, "
        f"loss {loss}; torch {torch.__version__}, "
        f"{torch.cuda.get_device_name() if cuda else f'{torch.get_num_threads()} threads'}; batch {args.batch} x {bands} x "
        f"{args.size}²; "
        f"{args.warmup} warm-up steps, {args.rounds} rounds of {args.steps} steps; load average (1 min) "
        f"{load0[0]:.1f} before, {load1[0]:.1f} after on {os.cpu_count()} CPUs"
    )
    for name, r in rates.items():
        print(
            f"{name:45s} {statistics.median(r):7.2f} samples/s  (rounds: {', '.join(f'{v:.1f}' for v in r)})"
        )
    a, b = (statistics.median(r) for r in list(rates.values())[:2])
    print(f"ratio auto / fp32 eager: {b / a:.2f}x")


if __name__ == "__main__":
    main()
