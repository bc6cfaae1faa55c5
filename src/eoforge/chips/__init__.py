"""Stage 2, chips: sample chip windows (grid with edge coverage, random, class-balanced), drop nodata and
unlabelled chips, split them (spatial blocks with a buffer, random, or regions), extract them as Dask tasks,
check the splits for spatial leakage, and store them (Zarr + GeoParquet index).

Modules: ``samplers`` (where chips go), ``splits`` (which split), ``leakage`` (the check), ``tasks`` (Dask
tasks), ``store`` (layout, info, GeoTIFF export), ``make`` (the stage), ``plots`` (report figures).
"""

from eoforge.chips.leakage import check_leakage
from eoforge.chips.make import make_chips
from eoforge.chips.splits import SPLITS, assign_blocks
from eoforge.chips.store import ChipStore

__all__ = ["SPLITS", "ChipStore", "assign_blocks", "check_leakage", "make_chips"]
