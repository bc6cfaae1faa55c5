"""eoforge: Earth-observation imagery to a trained model, an honest accuracy report and a full-scene map.

The public API, imported lazily so that ``import eoforge`` stays fast::

    import eoforge
    cfg = eoforge.load_config("run.yaml")
    result = eoforge.run(cfg, "runs/my")          # prepare -> chips -> train -> evaluate -> predict
    eoforge.predict("runs/my/model", ["new.tif"], "new_map.tif")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_config": "eoforge.config",
    "RunConfig": "eoforge.config",
    "prepare": "eoforge.prepare",
    "PreparedScene": "eoforge.prepare",
    "make_chips": "eoforge.chips",
    "ChipStore": "eoforge.chips",
    "train": "eoforge.train",
    "evaluate": "eoforge.evaluate",
    "predict": "eoforge.predict",
    "predict_scene": "eoforge.predict",
    "load_package": "eoforge.package",
    "area_estimate": "eoforge.evaluate.area",
    "estimate_area": "eoforge.evaluate.area",
    "sample_design": "eoforge.evaluate.sampling",
    "evaluate_map": "eoforge.evaluate.compare",
    "band_importance": "eoforge.evaluate.explain",
    "grad_cam": "eoforge.evaluate.explain",
    "explain": "eoforge.evaluate.explain",
    "run": "eoforge.pipeline",
    "create_model": "eoforge.models",
    "list_models": "eoforge.models",
    "register_model": "eoforge.models",
    "EoforgeError": "eoforge.errors",
    "InputError": "eoforge.errors",
    "DataError": "eoforge.errors",
    "PackageError": "eoforge.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'eoforge' has no attribute '{name}'")
