"""Cost of the per-pixel validation metrics the Task gives training, from one run.

    .venv/bin/python benchmarks/val_metrics.py [--batch 16] [--size 256] [--classes 7] [--repeat 5]

Seconds per validation batch of class indices ``(batch, size, size)`` (10 % unlabelled) for:
1. ``Task("segmentation").metrics``: accuracy, macro F1, kappa and mIoU read from one confusion matrix (one
   torchmetrics compute group);
2. the confusion matrix alone (what validation counted before the Task's metrics: ``val_miou`` only);
3. the same four metrics as separate torchmetrics classes (accuracy and F1 count their own statistics: three
   compute groups).
Prints 1/2 (target <= 1.1: the four metrics cost what the one matrix cost) and 3/1.
"""

from __future__ import annotations

import argparse
import time

import torch
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCohenKappa,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
)

from eoforge.config import IGNORE_INDEX
from eoforge.tasks import PresentClassMIoU, get_task


def seconds(metric: Metric | MetricCollection, pred: torch.Tensor, ref: torch.Tensor, repeat: int) -> float:
    metric.update(pred, ref)  # first call: compute groups are formed, buffers allocated
    metric.reset()
    t0 = time.perf_counter()
    for _ in range(repeat):
        metric.update(pred, ref)
    metric.compute()
    return (time.perf_counter() - t0) / repeat


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--classes", type=int, default=7)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.size, args.size)
    ref = torch.randint(0, args.classes, shape, generator=g)
    ref[torch.rand(shape, generator=g) < 0.1] = IGNORE_INDEX
    pred = torch.where(torch.rand(shape, generator=g) < 0.7, ref.clamp_max(args.classes - 1), 0)
    k, ig = args.classes, IGNORE_INDEX
    task = seconds(get_task("segmentation").metrics(k), pred, ref, args.repeat)
    alone = seconds(MulticlassConfusionMatrix(num_classes=k, ignore_index=ig), pred, ref, args.repeat)
    separate = MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes=k, average="micro", ignore_index=ig),
            "f1_macro": MulticlassF1Score(num_classes=k, average="macro", ignore_index=ig),
            "kappa": MulticlassCohenKappa(num_classes=k, ignore_index=ig),
            "miou": PresentClassMIoU(num_classes=k, ignore_index=ig),
        }
    )
    apart = seconds(separate, pred, ref, args.repeat)
    px = args.batch * args.size**2
    print(f"{px / 1e6:.2f} Mpx per batch, {k} classes, torch threads {torch.get_num_threads()}")
    print(f"1. task metrics (one confusion matrix): {task:.3f} s per batch")
    print(f"2. confusion matrix alone:              {alone:.3f} s per batch")
    print(f"3. four separate torchmetrics:          {apart:.3f} s per batch")
    print(f"ratio 1/2 = {task / alone:.2f} (target <= 1.1); 3/1 = {apart / task:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
