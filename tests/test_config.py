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
