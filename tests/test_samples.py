"""Integration tests on the real samples in $EOFORGE_SAMPLES (../shared/data); skipped where it is unset."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio

from eoforge.config import IGNORE_INDEX, parse_config
from eoforge.errors import InputError
from eoforge.pipeline import run
from eoforge.prepare import prepare

SAMPLES = os.environ.get("EOFORGE_SAMPLES")
pytestmark = pytest.mark.skipif(not SAMPLES, reason="EOFORGE_SAMPLES is not set (real EO samples)")

SLOVENIA_CLASSES = {
    1: "cultivated land",
    2: "forest",
    3: "grassland",
    4: "schrubland",
    8: "artificial surface",
}


def _slovenia(**labels: object) -> dict:
    root = Path(SAMPLES or "") / "eolearn-slovenia-s2"
    return {
        "inputs": {
            "images": [str(root / "derived" / "s2l1c_2015-07-11.tif")],
            "labels": {
                "path": str(root / "original" / "TestEOPatch" / "vector_timeless" / "LULC.gpkg"),
                "column": "LULC_NAME",
                **labels,
            },
            "classes": SLOVENIA_CLASSES,
        },
        "chips": {
            "size": 32,
            "stride": 32,
            "min_valid": 0.3,
            "split": {"val": 0.2, "test": 0.2, "block_size": 32},
        },
        "train": {"epochs": 2, "batch_size": 4},
        "predict": {"tile": 64, "overlap": 16},
    }


def test_slovenia_polygons_by_name_match_the_reference_raster(tmp_path: Path) -> None:
    """Class names in LULC_NAME rasterize onto the Sentinel-2 grid exactly as the published LULC raster."""
    with pytest.raises(InputError, match=r"LULC.gpkg: label values not listed in classes: ''"):
        prepare(parse_config(_slovenia()).inputs, tmp_path / "bad")
    prep = prepare(parse_config(_slovenia(ignore_unknown=True)).inputs, tmp_path / "run")
    ours = rasterio.open(prep.labels).read(1)
    ref = rasterio.open(Path(SAMPLES or "") / "eolearn-slovenia-s2" / "derived" / "lulc.tif").read(1)
    ids = np.array([*SLOVENIA_CLASSES, 0])
    ours_ids = ids[np.where(ours == IGNORE_INDEX, len(SLOVENIA_CLASSES), ours)]
    labelled = ref != 0
    agreement = (ours_ids[labelled] == ref[labelled]).mean()
    assert agreement > 0.995, agreement
    assert prep.class_counts[1] == pytest.approx(7601, rel=0.01)  # forest pixels per PROVENANCE.md


def test_slovenia_whole_cycle(tmp_path: Path) -> None:
    cfg = parse_config(_slovenia(ignore_unknown=True))
    result = run(cfg, tmp_path / "run")
    with (
        rasterio.open(tmp_path / "run" / "map.tif") as m,
        rasterio.open(cfg.inputs.images[0]) as src,
    ):
        assert (m.crs, m.transform, m.shape) == (src.crs, src.transform, src.shape)
        assert set(np.unique(m.read(1))) <= set(SLOVENIA_CLASSES)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["pixels"] > 0 and 0 <= metrics["overall_accuracy"] <= 1
    assert result.metrics["baseline"]["overall_accuracy"] > 0.3
