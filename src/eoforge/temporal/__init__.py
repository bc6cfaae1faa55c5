"""Time series: temporal and pixel models, labelled pixel series from CSV, NetCDF/Zarr cubes.

Importing this package registers ``tempcnn``, ``ltae``, ``pixel-mlp`` and ``pixel-cnn`` in the model registry.
"""

from __future__ import annotations

from eoforge.temporal import models as models

__all__ = ["models"]
