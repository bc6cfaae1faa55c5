from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import CRS, TRANSFORM, write_tif
from helpers import identity_package

from eoforge.errors import PackageError
from eoforge.predict import output_dtype, predict


@pytest.mark.parametrize(
    ("h", "w", "tile", "overlap"), [(150, 97, 64, 16), (40, 40, 64, 32), (129, 257, 32, 0)]
)
def test_stitched_map_reproduces_the_input_layout(
    tmp_path: Path, h: int, w: int, tile: int, overlap: int
) -> None:
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 3, (h, w))
    band0 = idx.astype(np.float32)
    band1 = rng.random((h, w), dtype=np.float32)
    band0[5:9, 7:20] = band1[5:9, 7:20] = -9999  # nodata in every band: an invalid pixel
    img = write_tif(tmp_path / "img.tif", np.stack([band0, band1]), nodata=-9999)
    pkg = identity_package(tmp_path / "model")
    res = predict(pkg, [img], tmp_path / "map.tif", tile=tile, overlap=overlap, batch_size=3)
    with rasterio.open(res.path) as src:
        assert src.crs.to_string() == CRS and src.transform == TRANSFORM and src.shape == (h, w)
        assert src.nodata == 255 and src.dtypes[0] == "uint8"
        out = src.read(1)
    expected = np.array([10, 20, 30], dtype=np.uint8)[idx]
    expected[5:9, 7:20] = 255
    np.testing.assert_array_equal(out, expected)


def test_output_is_a_tiled_compressed_cog(tmp_path: Path) -> None:
    img = write_tif(tmp_path / "img.tif", np.zeros((2, 600, 600), np.float32))
    res = predict(identity_package(tmp_path / "model", tile=128), [img], tmp_path / "map.tif")
    with rasterio.open(res.path) as src:
        assert src.profile["tiled"] and src.block_shapes[0] == (256, 256)
        assert src.compression.name.lower() == "zstd"
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert src.overviews(1)  # COG overviews for quick display
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_single_band_files_are_stacked_in_order(tmp_path: Path) -> None:
    idx = np.random.default_rng(2).integers(0, 3, (50, 60))
    b0 = write_tif(tmp_path / "b0.tif", idx.astype(np.uint8))
    b1 = write_tif(tmp_path / "b1.tif", np.full((50, 60), 2, np.uint8))
    pkg = identity_package(tmp_path / "model")
    out = rasterio.open(predict(pkg, [b0, b1], tmp_path / "a.tif").path).read(1)
    np.testing.assert_array_equal(out, np.array([10, 20, 30])[idx])
    out = rasterio.open(predict(pkg, [b1, b0], tmp_path / "b.tif").path).read(1)
    assert (out == 30).all()


def test_band_count_mismatch_is_refused_and_nothing_written(tmp_path: Path) -> None:
    img = write_tif(tmp_path / "img.tif", np.zeros((3, 40, 40), np.float32))
    pkg = identity_package(tmp_path / "model", bands=2)
    with pytest.raises(
        PackageError, match=r"img.tif: the image stack has 3 bands but the model was trained on 2 \(b0, b1\)"
    ):
        predict(pkg, [img], tmp_path / "map.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tif", "model"]


def test_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a model package"):
        predict(tmp_path, [tmp_path / "x.tif"], tmp_path / "map.tif")


def test_class_ids_above_254_use_uint16() -> None:
    assert output_dtype([1, 2, 254]) == ("uint8", 255)
    assert output_dtype([1, 255]) == ("uint16", 65535)


def test_bf16_predictor_gives_the_same_map_for_exact_inputs(tmp_path: Path) -> None:
    idx = np.random.default_rng(3).integers(0, 3, (70, 90))
    img = write_tif(tmp_path / "img.tif", np.stack([idx, idx]).astype(np.float32))
    pkg = identity_package(tmp_path / "model")
    a = rasterio.open(predict(pkg, [img], tmp_path / "a.tif").path).read(1)
    b = rasterio.open(predict(pkg, [img], tmp_path / "b.tif", precision="bf16").path).read(1)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(PackageError, match="unknown precision 'fp8'; choose one of: fp32, bf16"):
        predict(pkg, [img], tmp_path / "c.tif", precision="fp8")
