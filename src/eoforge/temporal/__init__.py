"""Time series: temporal and pixel models, labelled pixel series from CSV, NetCDF/Zarr cubes.

``import eoforge.temporal.models`` registers ``tempcnn``, ``ltae``, ``pixel-mlp`` and ``pixel-cnn`` in the
model registry (kept out of this ``__init__`` so that the CLI imports no torch until a command needs it).
"""
