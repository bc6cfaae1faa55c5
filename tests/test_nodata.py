"""Nodata semantics: the all/any rule, per-band values, GDAL masks, label nodata, band names checked at predict."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import CRS, TRANSFORM, write_tif
from helpers import identity_package

from eoforge.config import IGNORE_INDEX, InputsConfig, parse_config
from eoforge.errors import InputError
from eoforge.evaluate.warnings import band_gap_warnings
from eoforge.io.rasters import RasterStack, check_band_names, valid_mask
from eoforge.predict import predict
from eoforge.prepare import PreparedScene, prepare


def _cfg(scene: dict, images: list | None = None, **inputs: object) -> InputsConfig:
    raw = {
        "images": [str(p) for p in (images or scene["images"])],
        "labels": {"path": str(scene["labels"]), "column": "cover"},
        "classes": scene["classes"],
        **inputs,
    }
    return parse_config({"inputs": raw}).inputs


def _zero_band2_rows(scene: dict) -> list[Path]:
    """Band 2 of the fixture set to 0 (its nodata) on rows 10..19 of the water half: other bands stay valid."""
    with rasterio.open(scene["images"][1]) as src:
        a = src.read(1)
    a[10:20, :32] = 0
    path = write_tif(scene["dir"] / "band2_gaps.tif", a, nodata=0)
    return [scene["images"][0], path, scene["images"][2]]


def test_rule_all_keeps_pixels_where_one_band_is_nodata(
    scene: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = _zero_band2_rows(scene)
    with caplog.at_level(logging.WARNING, logger="eoforge"):
        prep = prepare(_cfg(scene, images), tmp_path / "all")
    assert not [r for r in caplog.records if "fall on image nodata" in r.getMessage()]
    with rasterio.open(prep.image) as src:
        img = src.read()
    with rasterio.open(prep.labels) as src:
        lab = src.read(1)
    assert np.isnan(img[1, 10:20, :32]).all() and not np.isnan(img[[0, 2], 10:20, :32]).any()
    assert (lab[10:20, :32] == 0).all()  # water labels kept
    assert prep.lost_to_nodata == [16, 0, 0]  # only the 4x4 corner nodata in every band
    saved = json.loads((prep.root / "scene.json").read_text())
    assert [c["lost_to_nodata"] for c in saved["classes"]] == [16, 0, 0]
    assert PreparedScene.load(prep.root).nodata_rule == "all"
    # statistics of band 2 use only its own valid values
    valid2 = ~np.isnan(img[1])
    assert prep.mean[1] == pytest.approx(float(img[1][valid2].astype(np.float64).mean()), rel=1e-9)
    # band 2 is missing at 320 of the valid pixels: recorded, logged, and a warning of the report
    valid = ~np.isnan(img).all(0)
    assert prep.band_gaps == {prep.bands[1]: pytest.approx(320 / valid.sum())}
    assert PreparedScene.load(prep.root).band_gaps == prep.band_gaps
    logged = [r.getMessage() for r in caplog.records if "of the valid pixels, filled" in r.getMessage()]
    pct = f"{320 / valid.sum():.0%}"
    assert logged == [f"band {prep.bands[1]}: nodata at {pct} of the valid pixels, filled with its mean there "
                      "(nodata_rule 'all'); use inputs.nodata_rule: any to map only where every band is valid"]  # fmt: skip
    ((code, message),) = band_gap_warnings(prep.band_gaps)
    assert code == "band_gaps" and f"'{prep.bands[1]}' at {pct}" in message and "nodata_rule: any" in message
    assert band_gap_warnings({"red": 0.04}) == [] and band_gap_warnings(None) == []

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="eoforge"):
        prep_any = prepare(_cfg(scene, images, nodata_rule="any"), tmp_path / "any")
    with rasterio.open(prep_any.labels) as src:
        assert (src.read(1)[10:20, :32] == IGNORE_INDEX).all()
    assert prep_any.lost_to_nodata == [16 + 320, 0, 0]
    assert prep_any.band_gaps == {}  # every band is valid wherever a pixel is
    warned = [r.getMessage() for r in caplog.records if "fall on image nodata" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("class water: 336 of 2048")


def test_per_band_nodata_list(scene: dict, tmp_path: Path) -> None:
    a = np.full((3, 8, 8), 5, np.int16)
    a[0, 0, 0] = -1  # nodata of band 1 only
    a[2, 1, 1] = -9999  # nodata of band 3 only
    a[1, 0, 0] = -9999  # a value, not nodata, in band 2
    path = write_tif(tmp_path / "multi.tif", a)
    with RasterStack([path], nodata=[-1, None, -9999]) as st:
        img = st.read()
    assert np.isnan(img[0, 0, 0]) and img[1, 0, 0] == -9999 and np.isnan(img[2, 1, 1])
    assert np.isnan(img).sum() == 2 and valid_mask(img).all()  # rule 'all': every pixel still valid
    with RasterStack([path], nodata=[-1, None, -9999], nodata_rule="any") as st:
        img = st.read()
    assert np.isnan(img[:, 0, 0]).all() and np.isnan(img[:, 1, 1]).all() and valid_mask(img).sum() == 62
    with pytest.raises(InputError, match=r"inputs.nodata lists 2 values but the stack has 3 bands"):
        RasterStack([path], nodata=[0, 0])


def test_gdal_mask_and_alpha_count_as_nodata(tmp_path: Path) -> None:
    data = np.arange(2 * 16 * 16, dtype=np.uint16).reshape(2, 16, 16) + 1
    mask = np.full((16, 16), 255, np.uint8)
    mask[:4] = 0
    profile = dict(driver="GTiff", width=16, height=16, dtype="uint16", crs=CRS, transform=TRANSFORM)
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(tmp_path / "masked.tif", "w", count=2, **profile) as dst,
    ):
        dst.write(data)
        dst.write_mask(mask)
    with RasterStack([tmp_path / "masked.tif"]) as st:
        img = st.read()
    assert st.count == 2 and np.isnan(img[:, :4]).all() and not np.isnan(img[:, 4:]).any()

    alpha = (mask[None] > 0).astype(np.uint16) * 65535
    with rasterio.open(tmp_path / "alpha.tif", "w", count=3, alpha="YES", **profile) as dst:
        dst.write(np.concatenate([data[:1], alpha, data[1:]]))  # GDAL makes band 2 the alpha band
    with RasterStack([tmp_path / "alpha.tif"]) as st:
        assert st.count == 2 and st.band_labels == ["alpha_b1", "alpha_b3"]  # alpha is no model input
        img = st.read()
    assert np.isnan(img[:, :4]).all() and not np.isnan(img[:, 4:]).any()
    np.testing.assert_array_equal(img[:, 4:], data[:, 4:].astype(np.float32))


def test_label_nodata_minus_one(scene: dict, tmp_path: Path) -> None:
    lab = np.where(np.arange(64)[None, :] < 32, 1, 2).repeat(64, 0).astype(np.int16)
    lab[:, :10] = -1  # unlabelled, but not tagged as nodata in the file
    path = write_tif(tmp_path / "lab.tif", lab)
    raw = {"images": [str(p) for p in scene["images"]], "classes": scene["classes"]}
    with pytest.raises(InputError) as err:
        prepare(parse_config({"inputs": {**raw, "labels": {"path": str(path)}}}).inputs, tmp_path / "a")
    msg = str(err.value)
    assert "set inputs.labels.nodata: -1" in msg and "add them to inputs.classes" not in msg
    cfg = parse_config({"inputs": {**raw, "labels": {"path": str(path), "nodata": -1}}}).inputs
    prep = prepare(cfg, tmp_path / "b")
    with rasterio.open(prep.labels) as src:
        out = src.read(1)
    assert (out[:, :10] == IGNORE_INDEX).all() and (out[4:, 10:32] == 0).all() and (out[:, 32:] == 1).all()


def test_unknown_class_id_still_suggests_adding_it(scene: dict, tmp_path: Path) -> None:
    lab = np.full((64, 64), 7, np.uint8)
    path = write_tif(tmp_path / "lab.tif", lab)
    raw = {"images": [str(p) for p in scene["images"]], "classes": scene["classes"]}
    cfg = parse_config({"inputs": {**raw, "labels": {"path": str(path)}}}).inputs
    with pytest.raises(InputError, match=r"values not listed in classes: 7; add them to inputs.classes"):
        prepare(cfg, tmp_path / "a")


def _described(path: Path, data: np.ndarray, names: list[str]) -> Path:
    write_tif(path, data)
    with rasterio.open(path, "r+") as dst:
        dst.descriptions = tuple(names)
    return path


def test_swapped_band_order_is_refused_unless_overridden(tmp_path: Path) -> None:
    pkg = identity_package(tmp_path / "model")  # bands b0, b1
    idx = np.random.default_rng(0).integers(0, 3, (40, 40)).astype(np.float32)
    data = np.stack([idx, np.zeros_like(idx)])
    good = _described(tmp_path / "good.tif", data, ["b0", "b1"])
    bad = _described(tmp_path / "bad.tif", data, ["b1", "b0"])
    out = rasterio.open(predict(pkg, [good], tmp_path / "good_map.tif").path).read(1)
    np.testing.assert_array_equal(out, np.array([10, 20, 30])[idx.astype(int)])
    with pytest.raises(InputError) as err:
        predict(pkg, [bad], tmp_path / "bad_map.tif")
    assert str(err.value).count("\n") == 0
    assert "[b1, b0] differ from the model's [b0, b1]" in str(err.value)
    assert not (tmp_path / "bad_map.tif").exists()
    res = predict(pkg, [bad], tmp_path / "forced.tif", ignore_band_names=True)
    np.testing.assert_array_equal(rasterio.open(res.path).read(1), out)


def test_check_band_names_set_and_missing_names() -> None:
    check_band_names(None, ["red", "nir"])  # files without names: nothing to compare
    check_band_names(["red", "nir"], ["red", "nir"])
    with pytest.raises(InputError, match=r"\[red, green\] differ from the model's \[red, nir\]"):
        check_band_names(["red", "green"], ["red", "nir"])
    check_band_names(["red", "green"], ["red", "nir"], ignore=True)


def test_package_keeps_the_rule_and_old_packages_read_as_any(tmp_path: Path) -> None:
    from eoforge.package import read_meta

    pkg = identity_package(tmp_path / "model")
    assert read_meta(pkg).nodata_rule == "all"
    meta = json.loads((pkg / "eoforge.json").read_text())
    del meta["nodata_rule"]
    (pkg / "eoforge.json").write_text(json.dumps(meta))
    assert read_meta(pkg).nodata_rule == "any"
