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


def _everest() -> dict:
    root = Path(SAMPLES or "") / "everest-landsat7-glaciers"
    return {
        "inputs": {
            "images": [
                str(root / "LE71400412000304SGS00_RGB.tif"),
                str(root / "LE71400412000304SGS00_B4.tif"),
            ],
            "bands": ["red", "green", "blue", "nir"],
            "labels": {"path": str(root / "15_rgi60_glacier_outlines.gpkg"), "value": 1, "background": 0},
            "classes": {0: "other", 1: "glacier"},
        },
        "chips": {"size": 64, "stride": 64, "split": {"val": 0.15, "test": 0.2, "block_size": 128}},
        "train": {"epochs": 2, "batch_size": 8},
        "predict": {"tile": 128, "overlap": 32},
    }


def test_everest_outlines_reprojected_from_wgs84_cover_the_published_fraction(tmp_path: Path) -> None:
    """RGI outlines (EPSG:4326) burnt onto the Landsat grid (EPSG:32645): 54.0% glacier per PROVENANCE.md."""
    prep = prepare(parse_config(_everest()).inputs, tmp_path / "run")
    assert prep.grid.crs == "EPSG:32645" and prep.grid.shape == (655, 800)
    lab = rasterio.open(prep.labels).read(1)
    glacier = (lab == 1).sum() / lab.size
    assert glacier == pytest.approx(0.540, abs=0.005)
    # the outlines sit on bright ice: mean RGB brightness inside vs outside (207.7 vs 142.4 in VERIFY.txt)
    rgb = rasterio.open(prep.image).read([1, 2, 3]).mean(axis=0)
    assert rgb[lab == 1].mean() > rgb[lab == 0].mean() + 40


def test_everest_whole_cycle(tmp_path: Path) -> None:
    result = run(parse_config(_everest()), tmp_path / "run")
    with rasterio.open(tmp_path / "run" / "map.tif") as m:
        assert m.crs.to_string() == "EPSG:32645" and m.shape == (655, 800)
        assert set(np.unique(m.read(1))) <= {0, 1, 255}
    assert result.metrics["baseline"]["overall_accuracy"] > 0.6


S2_COMMON = [
    "coastal", "blue", "green", "red", "rededge071", "rededge075", "rededge078",
    "nir", "nir08", "nir09", "cirrus", "swir16", "swir22",
]  # fmt: skip


def test_slovenia_with_ndvi_and_ndwi_appended(tmp_path: Path) -> None:
    """Indices appended as channels equal the numpy formulas; the rasterized LULC still matches lulc.tif."""
    raw = _slovenia(ignore_unknown=True)
    raw["inputs"]["bands"] = S2_COMMON
    raw["prepare"] = {"indices": ["NDVI", "NDWI"]}
    cfg = parse_config(raw)
    prep = prepare(cfg.inputs, tmp_path / "run", prep=cfg.prepare)
    assert prep.bands == [*S2_COMMON, "NDVI", "NDWI"]
    img = rasterio.open(prep.image).read().astype(np.float64)
    green, red, nir = img[2], img[3], img[7]
    ok = ~np.isnan(img[13])
    assert ok.mean() > 0.99
    np.testing.assert_allclose(img[13][ok], ((nir - red) / (nir + red))[ok], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(img[14][ok], ((green - nir) / (green + nir))[ok], rtol=1e-5, atol=1e-6)
    ours = rasterio.open(prep.labels).read(1)
    ref = rasterio.open(Path(SAMPLES or "") / "eolearn-slovenia-s2" / "derived" / "lulc.tif").read(1)
    ids = np.array([*SLOVENIA_CLASSES, 0])
    ours_ids = ids[np.where(ours == IGNORE_INDEX, len(SLOVENIA_CLASSES), ours)]
    assert (ours_ids[ref != 0] == ref[ref != 0]).mean() > 0.995
