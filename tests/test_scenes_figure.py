"""The report's chip map shows every scene of a many-scene run (small multiples), not only the first."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image
from test_scenes import _inputs, _scene

from eoforge.chips import make_chips
from eoforge.chips.plots import footprint_map_png, scenes_footprint_png
from eoforge.config import ChipsConfig
from eoforge.prepare import prepare


def size(png: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(png)) as im:
        return im.size


def test_chip_map_has_a_panel_per_scene(tmp_path: Path) -> None:
    scenes = [_scene(tmp_path / f"scene{k}", k, 500_000.0 + 5_000 * k) for k in range(3)]
    run = prepare(_inputs(scenes), tmp_path / "out")
    cfg = ChipsConfig.model_validate(
        {"size": 32, "stride": 32, "split": {"val": 0.2, "test": 0.25, "block_size": 32, "seed": 1}}
    )
    store = make_chips(run, cfg, tmp_path / "out")
    parts = list(run.parts())
    assert [n for n, _ in parts] == ["s0", "s1", "s2"]
    one = footprint_map_png(store, parts[0][1], only="s0")
    every = scenes_footprint_png(store, parts)
    (w1, h1), (w3, h3) = size(one), size(every)
    assert w3 / h3 > 2.0 > w1 / h1  # three square scenes side by side vs one
    # one scene alone: the single map, exactly
    assert scenes_footprint_png(store, parts[:1]) == footprint_map_png(store, parts[0][1], only="s0")
