"""The model-input normalisation: one definition for training chips, the torch predictor and the ONNX predictor.

Per channel ``(x - offset) / scale`` with the offset and scale that `prepare` computed (``mean``/``std`` of
``scene.json`` and ``eoforge.json``: mean/std, min/(max - min) or p_low/(p_high - p_low)). Under the recipe's
``normalize: percentile`` the result is clipped to [0, 1], i.e. the values are clamped to the percentiles before
the stretch; :func:`clamps` reads that from the recipe, so training and predict agree. NaN (nodata) becomes 0
last (the band mean under zscore, the minimum or low percentile under minmax/percentile).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

CLAMPED_MODES = ("percentile",)
CLAMP_SINCE_RECIPE = 2  # recipes of version 1 (older packages) were trained without the clip


def clamps(recipe: Mapping[str, Any] | None) -> bool:
    """Whether the recipe's normalisation clips to [0, 1] (``normalize: percentile`` in a recipe of version 2 or
    later); None (no recipe): no."""
    if not recipe or int(recipe.get("version", 1)) < CLAMP_SINCE_RECIPE:
        return False
    return (recipe.get("normalize") or {}).get("mode") in CLAMPED_MODES


def normalize_array(image: np.ndarray, offset: np.ndarray, scale: np.ndarray, clamp: bool) -> np.ndarray:
    """``image`` ``(..., C, H, W)`` normalised with per-channel ``offset``/``scale`` ``(C,)``, float32."""
    out = (image - offset[:, None, None]) / scale[:, None, None]
    if clamp:
        np.clip(out, 0.0, 1.0, out=out)  # NaN stays NaN
    return np.nan_to_num(out, nan=0.0).astype(np.float32, copy=False)


def normalize_tensor(x: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor, clamp: bool) -> torch.Tensor:
    """The same on a tensor ``(N, C, H, W)``; ``offset``/``scale`` shaped ``(1, C, 1, 1)``."""
    t = (x - offset) / scale
    if clamp:
        t = t.clamp(0.0, 1.0)  # NaN stays NaN
    return torch.nan_to_num(t, nan=0.0)
