"""Free-space check of a run: the bytes its large outputs need, estimated from the grid, the channel count and
the dtypes, against the free space of the run folder, before a stage writes anything.

The estimates are uncompressed upper bounds (the stores are compressed, so real use is lower): the prepared
stack (float32 channels + uint8 labels; a time stack twice: ``image.tif`` and ``stack.zarr``), the chip store (every chip place the sampler may keep), the class map
with its optional outputs (resume parts, raw tiled copy and COG: three copies) and the evaluation rasters.
Training writes checkpoints whose size depends on the model, not the grid: not counted.
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from eoforge.errors import DataError

log = logging.getLogger(__name__)

FLOAT32 = 4
MAP_COPIES = 3  # resume parts (.npz per row band), the raw tiled GeoTIFF, the COG
WHAT = {"prepare": "prepared stack", "chips": "chips", "predict": "map", "evaluate": "evaluation rasters"}


def chip_places(height: int, width: int, chips: Any) -> int:
    """Most chips the sampler can keep: ``count`` (random), the grid places (grid), twice them (balanced:
    the grid plus chips rich in rare classes; a typical bound, not a hard one)."""
    if chips.sampler == "random":
        return int(chips.count or 0)
    size, stride = chips.size, chips.stride or chips.size
    if height < size or width < size:
        return 0
    places = (math.ceil((height - size) / stride) + 1) * (math.ceil((width - size) / stride) + 1)
    return 2 * places if chips.sampler == "balanced" else places


def stage_bytes(
    stages: Iterable[str],
    height: int,
    width: int,
    channels: int,
    class_ids: Sequence[int],
    chips: Any,
    predict: Any,
    time_stack: bool = False,
) -> dict[str, int]:
    """Estimated bytes written by each of ``stages`` on a ``height`` x ``width`` grid of ``channels``; a
    ``time_stack`` is prepared twice (``image.tif`` and the ``(time, band, y, x)`` ``stack.zarr``)."""
    pixels = height * width
    class_bytes = 1 if max(class_ids, default=0) < 255 else 2
    per_map_pixel = class_bytes
    if predict.probabilities is not None:
        per_map_pixel += len(class_ids) * (FLOAT32 if predict.probabilities == "float32" else 1)
    if predict.uncertainty is not None:
        per_map_pixel += FLOAT32
    formulas = {
        "prepare": pixels * (FLOAT32 * channels * (2 if time_stack else 1) + 1),
        "chips": chip_places(height, width, chips) * chips.size**2 * (FLOAT32 * channels + 1),
        "predict": MAP_COPIES * pixels * per_map_pixel,
        "evaluate": pixels * (class_bytes + 1),  # test pixels (class ids) + split codes
    }
    return {s: formulas[s] for s in stages if s in formulas}


def _size(n: float) -> str:
    for unit, power in (("GiB", 30), ("MiB", 20)):
        if n >= 2**power:
            return f"{n / 2**power:.1f} {unit}" if power == 30 else f"{n / 2**power:.0f} {unit}"
    return f"{n / 2**10:.0f} KiB"


def check_free_space(out: str | Path, needs: dict[str, int]) -> None:
    """Refuse (one line naming ``out``, the estimate and the free space) when ``needs`` exceed the free space."""
    need = sum(needs.values())
    if need <= 0:
        return
    free = shutil.disk_usage(out).free
    log.debug("space: needs %d bytes (%s), %d free", need, needs, free)
    if need > free:
        parts = ", ".join(f"{WHAT.get(k, k)} {_size(v)}" for k, v in needs.items() if v)
        raise DataError(
            f"{out}: not enough free space: the run needs about {_size(need)} ({parts}; uncompressed "
            f"estimate) but {_size(free)} are free; free some space or choose an output folder on another disk"
        )
