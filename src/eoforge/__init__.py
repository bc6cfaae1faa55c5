"""eoforge: Earth-observation imagery to a trained model, an honest accuracy report and a full-scene map."""

from __future__ import annotations

__version__ = "0.1.0"
