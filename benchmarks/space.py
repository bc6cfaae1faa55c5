"""The free-space check of `eoforge run` (issue 12): what it costs and how far its estimate is from the bytes the
stages really write, from one run.

    .venv/bin/python benchmarks/space.py [--size 2196]

Two scenes: the Slovenia Sentinel-2 sample (`$EOFORGE_SAMPLES/eolearn-slovenia-s2`, real reflectances, skipped
with a line when absent) and a generated 13-band Sentinel-2-like tile of --size px (random uint16: nearly
incompressible, the estimate's worst case for a tight bound). For each: the time of the up-front check (it
opens the sources to learn the grid) against the time of the prepare stage, and estimated / written bytes of
the prepared stack and of the chip store. The estimate is an uncompressed upper bound by design, so the ratio
says how much free space a run asks for beyond what it uses.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).parent))


SLOVENIA_CLASSES = {
    1: "cultivated land",
    2: "forest",
    3: "grassland",
    4: "schrubland",
    8: "artificial surface",
}


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(name: str, raw: dict[str, Any], out: Path) -> None:
    from eoforge.config import parse_config
    from eoforge.pipeline import run_stage, space_needs

    cfg = parse_config(raw)
    out.mkdir(parents=True)
    t0 = time.perf_counter()
    needs = space_needs(cfg, out, ["prepare", "chips", "predict", "evaluate"])
    t_check = time.perf_counter() - t0
    t0 = time.perf_counter()
    run_stage(cfg, out, "prepare")
    t_prep = time.perf_counter() - t0
    run_stage(cfg, out, "chips")
    prep, chips = _du(out / "prepared"), _du(out / "chips")
    print(
        f"{name}: check {t_check:.2f} s vs prepare {t_prep:.1f} s (ratio {t_check / t_prep:.3f}); "
        f"estimate / written: prepared stack {needs['prepare'] / prep:.2f} ({needs['prepare'] / 2**20:.1f} / "
        f"{prep / 2**20:.1f} MiB), chips {needs['chips'] / chips:.2f} ({needs['chips'] / 2**20:.1f} / "
        f"{chips / 2**20:.1f} MiB); whole run estimate {sum(needs.values()) / 2**20:.1f} MiB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--size", type=int, default=2196, help="side of the generated tile's 10 m grid (multiple of 6)"
    )
    args = ap.parse_args()
    chips = {"size": 64, "stride": 64, "min_valid": 0.3, "split": {"val": 0.2, "test": 0.2, "block_size": 64}}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        root = Path(os.environ.get("EOFORGE_SAMPLES", "/nonexistent")) / "eolearn-slovenia-s2"
        if (root / "derived" / "s2l1c_2015-07-11.tif").is_file():
            raw = {
                "inputs": {
                    "images": [str(root / "derived" / "s2l1c_2015-07-11.tif")],
                    "labels": {
                        "path": str(root / "original" / "TestEOPatch" / "vector_timeless" / "LULC.gpkg"),
                        "column": "LULC_NAME",
                        "ignore_unknown": True,
                    },
                    "classes": SLOVENIA_CLASSES,
                },
                "chips": {**chips, "size": 32, "stride": 32, "split": {**chips["split"], "block_size": 32}},
            }
            measure("slovenia S2 sample", raw, tmp / "slovenia")
        else:
            print(f"slovenia S2 sample: not found under {root}; skipped")
        from prepare import tile_inputs

        raw = {"inputs": tile_inputs(tmp / "tile", args.size), "chips": chips}
        (tmp / "cfg.yaml").write_text(yaml.safe_dump(raw))
        measure(f"generated tile {args.size} px, 13 bands (random)", raw, tmp / "tile-run")


if __name__ == "__main__":
    main()
