"""The demo's spatial block split with and without ``chips.split.stratify``: per split seed, the blocks and
chips of train / val / test and the labelled pixels of every class in each (prepare once, then the chips
stage only).

    PYTHONPATH=src python benchmarks/split_stratify.py [--seeds 5] [--block-size 96]

Two pixel counts per class, train/val/test: ``blocks``, the labelled pixels of the blocks of each split (each
pixel once: what evaluation scores, as ``OUT/eval/splits.tif`` maps it), and ``chips``, the labelled pixels
summed over the kept chips of each split as ``chips.json`` records them (overlapping chips count a pixel
again; chips dropped at split borders count nothing).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import rasterio

from eoforge.chips import SPLITS, make_chips
from eoforge.demo import demo_config
from eoforge.pipeline import stage_prepare
from eoforge.tasks import get_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=5, help="split seeds 0..N-1")
    ap.add_argument(
        "--block-size", type=int, default=None, help="chips.split.block_size (default: the demo's)"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    cfg = demo_config()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        scene = stage_prepare(cfg, out)
        with rasterio.open(scene.labels) as src:
            labels = src.read(1)
        names = scene.class_names
        block = args.block_size or cfg.chips.split.block_size or 2 * cfg.chips.size
        rr, cc = np.mgrid[0 : labels.shape[0], 0 : labels.shape[1]] // block
        print(f"demo, block size {block} px, val {cfg.chips.split.val}, test {cfg.chips.split.test}")
        print("seed stratify | blocks t/v/te | chips t/v/te (dropped) | px " + " | ".join(names))
        missing = {(m, s): 0 for m in ("blocks", "chips") for s in (False, True)}
        for seed in range(args.seeds):
            for strat in (False, True):
                split = cfg.chips.split.model_copy(
                    update={"seed": seed, "stratify": strat, "block_size": block}
                )
                run = out / f"s{seed}_{int(strat)}"
                chips_cfg = cfg.chips.model_copy(update={"split": split})
                make_chips(scene, chips_cfg, run, compute=cfg.compute, task=get_task(cfg.task))
                meta = json.loads((run / "chips" / "chips.json").read_text())
                table = np.array([[SPLITS.index(v) for v in r] for r in meta["block_splits"]])
                where = table[rr, cc]
                by_blocks = [
                    [int(((labels == i) & (where == k)).sum()) for k in range(3)] for i in range(len(names))
                ]
                by_chips = [[meta["class_pixels"][s][n] for s in SPLITS] for n in names]
                n_blocks = "/".join(str(int((table == k).sum())) for k in range(3))
                c = meta["counts"]
                head = f"{seed:4d} {strat!s:8} | {n_blocks} | {c['train']}/{c['val']}/{c['test']} "
                head += f"({meta['dropped_by_split']})"
                for m, px in (("blocks", by_blocks), ("chips", by_chips)):
                    missing[m, strat] += sum(v == 0 for per in px if sum(per) for v in per)
                    print(f"{head:42} | {m:6} " + " | ".join("/".join(map(str, per)) for per in px))
                    head = ""
        for m in ("blocks", "chips"):
            print(
                f"class-split pairs without labelled pixels ({m}), {args.seeds} seeds: "
                f"plain {missing[m, False]}, stratify {missing[m, True]}"
            )


if __name__ == "__main__":
    main()
