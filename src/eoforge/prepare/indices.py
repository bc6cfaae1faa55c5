"""Spectral indices of the Awesome Spectral Indices catalogue, computed through ``spyndex`` from bands named by
STAC eo common name (blue, red, nir, swir16 ...)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from eoforge.errors import InputError

log = logging.getLogger(__name__)

# A few common names that sensors use for a band spyndex knows under another name (nir08 is the narrow NIR,
# which spyndex calls N2, but a Landsat "nir08" is what indices mean by N).
_FALLBACK = {"nir": ("nir08",), "nir08": ("nir",)}


def _spyndex() -> Any:
    import spyndex  # imported lazily: it loads its catalogue (and pandas/xarray) at import

    return spyndex


def list_indices() -> list[tuple[str, str, list[str]]]:
    """(name, long name, band common names) of every catalogue index computable from bands alone."""
    sp = _spyndex()
    out = []
    for name in sorted(sp.indices):
        idx = sp.indices[name]
        if any(b not in sp.bands and b not in sp.constants for b in idx.bands):
            continue  # needs radar backscatter, kernels or other inputs that are not optical bands
        bands = [sp.bands[b].common_name for b in idx.bands if b in sp.bands]
        out.append((name, idx.long_name, bands))
    return out


def required_bands(name: str) -> dict[str, str]:
    """Symbol -> common name of the bands an index needs; unknown names list a few valid ones."""
    sp = _spyndex()
    if name not in sp.indices:
        close = sorted(n for n in sp.indices if n.lower().startswith(name[:2].lower()))[:12]
        raise InputError(
            f"unknown spectral index '{name}' in prepare.indices; `eoforge indices` lists all "
            f"{len(sp.indices)} (similar: {', '.join(close) or 'none'})"
        )
    idx = sp.indices[name]
    unknown = [b for b in idx.bands if b not in sp.bands and b not in sp.constants]
    if unknown:
        raise InputError(
            f"spectral index '{name}' needs inputs eoforge cannot provide ({', '.join(unknown)}); choose another"
        )
    return {b: sp.bands[b].common_name for b in idx.bands if b in sp.bands}


def resolve(name: str, band_names: Sequence[str]) -> dict[str, int]:
    """Symbol -> stack band position for one index; a missing band is named in the error."""
    pos = {n: i for i, n in enumerate(band_names)}
    out = {}
    for sym, common in required_bands(name).items():
        hit = next((pos[c] for c in (common, *_FALLBACK.get(common, ())) if c in pos), None)
        if hit is None:
            raise InputError(
                f"spectral index {name} needs the {common} band ({sym}) but the stack has "
                f"{', '.join(band_names)}; add it to the images (named by inputs.bands or inputs.sensor)"
            )
        out[sym] = hit
    return out


def compute(name: str, stack: np.ndarray, symbols: dict[str, int]) -> np.ndarray:
    """The index over ``stack`` (C, h, w) float32: NaN where an input band is NaN or the formula is undefined."""
    sp = _spyndex()
    params: dict[str, object] = {sym: stack[i].astype(np.float64) for sym, i in symbols.items()}
    for c in sp.indices[name].bands:
        if c in sp.constants and c not in params:
            params[c] = sp.constants[c].default
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = np.asarray(sp.computeIndex(name, params=params), dtype=np.float32)
    out = np.broadcast_to(out, stack.shape[1:]).astype(np.float32)
    out[~np.isfinite(out)] = np.nan
    return out
