from __future__ import annotations

from pathlib import Path

import pytest

from eoforge.config import load_config, resolve_images
from eoforge.errors import InputError

CONTRACT = """
inputs:
  images: [a.tif, b.tif]
  bands: [blue, green, red, nir, swir16, swir22]
  nodata: -99999
  labels: {path: labels.gpkg, column: class}
  classes: {1: developed, 2: agriculture}
chips: {size: 128, stride: 64, split: {val: 0.15, test: 0.15}}
model: {arch: unet, encoder: resnet18}
train: {epochs: 20, batch_size: 16, lr: 0.001}
predict: {overlap: 32}
"""


def test_the_public_contract_parses_with_paths_from_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "run.yaml"
    path.write_text(CONTRACT)
    cfg = load_config(path)
    assert cfg.inputs.images == [str(tmp_path / "cfg" / "a.tif"), str(tmp_path / "cfg" / "b.tif")]
    assert cfg.inputs.labels.path == tmp_path / "cfg" / "labels.gpkg"
    assert cfg.inputs.nodata == -99999 and cfg.inputs.classes == {1: "developed", 2: "agriculture"}
    assert (cfg.chips.size, cfg.chips.stride, cfg.chips.split.val) == (128, 64, 0.15)
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.train.lr, cfg.predict.overlap) == (20, 16, 0.001, 32)


def test_unknown_keys_and_bad_values_are_named(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(CONTRACT.replace("stride: 64", "strid: 64").replace("size: 128", "size: 100"))
    with pytest.raises(InputError) as exc:
        load_config(path)
    msg = str(exc.value)
    assert "run.yaml: invalid config" in msg and "chips.strid: Extra inputs are not permitted" in msg
    assert "multiple of 32" in msg


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("inputs: [unclosed")
    with pytest.raises(InputError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_globs_are_sorted_and_must_match(tmp_path: Path) -> None:
    for name in ("B03.tif", "B01.tif", "B02.tif"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in resolve_images([str(tmp_path / "B0*.tif")])] == ["B01.tif", "B02.tif", "B03.tif"]
    with pytest.raises(InputError, match=r"B9\*.tif: no file matches"):
        resolve_images([str(tmp_path / "B9*.tif")])


def test_weights_paths_resolve_and_urls_stay(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(CONTRACT.replace("encoder: resnet18}", "encoder: resnet18, weights: w/enc.pt}"))
    assert load_config(path).model.weights == str(tmp_path / "w" / "enc.pt")
    path.write_text(
        CONTRACT.replace("encoder: resnet18}", "encoder: resnet18, weights: 'https://h.org/e.pt'}")
    )
    assert load_config(path).model.weights == "https://h.org/e.pt"


def test_inputs_and_prepare_keys_resolve_paths_and_check_values(tmp_path: Path) -> None:
    raw = CONTRACT.replace(
        "  images: [a.tif, b.tif]\n",
        "  images: [[t1.tif, t2.tif], b.tif]\n  sensor: sentinel2-l2a\n  nodata: [0, null]\n"
        "  masks: [{band: SCL, classes: [cloud_high]}, {path: m/clouds.gpkg}]\n",
    ).replace("  nodata: -99999\n", "")
    raw += "prepare: {grid: {like: ref.tif}, aoi: aoi.gpkg, indices: [NDVI], normalize: percentile}\n"
    path = tmp_path / "run.yaml"
    path.write_text(raw)
    cfg = load_config(path)
    assert cfg.inputs.images == [
        [str(tmp_path / "t1.tif"), str(tmp_path / "t2.tif")],
        str(tmp_path / "b.tif"),
    ]
    assert cfg.inputs.masks[1].path == str(tmp_path / "m" / "clouds.gpkg") and cfg.inputs.nodata == [0, None]
    assert cfg.prepare.grid.like == str(tmp_path / "ref.tif") and cfg.prepare.aoi == str(
        tmp_path / "aoi.gpkg"
    )
    assert cfg.inputs.nodata_rule == "all" and cfg.prepare.clip == (2.0, 98.0)
    for bad, msg in (
        ("prepare: {aoi: [1, 2, 0, 3]}", "min < max"),
        ("prepare: {grid: {like: r.tif, resolution: 10}}", "not both"),
        ("prepare: {clip: [50, 10]}", "0 <= low < high <= 100"),
        ("prepare: {mosaic: max}", "prepare.mosaic"),
    ):
        path.write_text(CONTRACT + bad + "\n")
        with pytest.raises(InputError, match=msg):
            load_config(path)
    path.write_text(CONTRACT.replace("  nodata: -99999\n", "  masks: [{classes: [1]}]\n"))
    with pytest.raises(InputError, match="give a mask either `path` or `band`"):
        load_config(path)
