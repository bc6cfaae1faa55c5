from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from conftest import CRS, TRANSFORM, pixel_box, rows_cols_nodata, write_tif

from eoforge.config import IGNORE_INDEX, InputsConfig, parse_config
from eoforge.errors import DataError, InputError
from eoforge.prepare import PreparedScene, prepare


def _cfg(
    scene: dict, images: list | None = None, classes: dict | None = None, **labels: object
) -> InputsConfig:
    """Inputs config for the `scene` fixture; `labels` overrides the label section (vector 'cover' by default)."""
    lab = {"path": str(scene["labels"]), "column": "cover"} if "path" not in labels else {}
    lab.update({k: str(v) if isinstance(v, Path) else v for k, v in labels.items()})
    raw = {
        "images": [str(p) for p in (images or scene["images"])],
        "labels": lab,
        "classes": classes or scene["classes"],
    }
    return parse_config({"inputs": raw}).inputs


def test_stack_keeps_georeferencing_values_and_nodata(scene: dict, tmp_path: Path) -> None:
    prep = prepare(_cfg(scene), tmp_path / "run", block=24)  # small blocks: exercise the block loop
    with rasterio.open(prep.image) as src:
        assert src.count == 3 and src.crs.to_string() == CRS and src.transform == TRANSFORM
        assert src.shape == (64, 64) and src.dtypes[0] == "float32"
        img = src.read()
        assert src.descriptions == ("band1", "band2", "band3")
    for b, p in enumerate(scene["images"]):
        with rasterio.open(p) as s:
            raw = s.read(1).astype(np.float32)
        valid = raw != 0
        np.testing.assert_array_equal(img[b][valid], raw[valid])
    assert np.isnan(img[:, rows_cols_nodata()[0], rows_cols_nodata()[1]]).all()
    assert prep.bands == ["band1", "band2", "band3"]


def test_known_polygon_burns_the_right_pixels(scene: dict, tmp_path: Path) -> None:
    prep = prepare(_cfg(scene), tmp_path / "run")
    with rasterio.open(prep.labels) as src:
        lab = src.read(1)
        assert src.transform == TRANSFORM and src.nodata == IGNORE_INDEX
    expected = np.where(np.arange(64)[None, :] < 32, 0, 1).repeat(64, 0).astype(np.uint8)
    expected[8:24, 40:56] = 2  # 'field' (class index 2) burnt over 'forest'
    expected[rows_cols_nodata()] = IGNORE_INDEX  # nodata pixels are unlabelled
    np.testing.assert_array_equal(lab, expected)
    assert prep.class_counts == [int((expected == k).sum()) for k in range(3)]


def test_labels_in_another_crs_are_reprojected(scene: dict, tmp_path: Path) -> None:
    gdf = gpd.GeoDataFrame({"cover": ["field"]}, geometry=[pixel_box(8, 40, 24, 56)], crs=CRS).to_crs(
        "EPSG:4326"
    )
    path = tmp_path / "wgs84.geojson"
    gdf.to_file(path)
    cfg = _cfg({**scene, "labels": path})
    lab = rasterio.open(prepare(cfg, tmp_path / "run").labels).read(1)
    field = lab == 2
    assert field.sum() == 16 * 16
    assert field[8:24, 40:56].all()


def test_stats_are_exact_over_valid_pixels(scene: dict, tmp_path: Path) -> None:
    prep = prepare(_cfg(scene), tmp_path / "run", block=16)
    for b, p in enumerate(scene["images"]):
        raw = rasterio.open(p).read(1).astype(np.float64)
        v = raw[raw != 0]
        assert prep.mean[b] == pytest.approx(v.mean(), rel=1e-9)
        assert prep.std[b] == pytest.approx(v.std(), rel=1e-6)
    again = PreparedScene.load(tmp_path / "run" / "prepared")
    assert again == prep


def test_raster_labels_with_nodata_and_ids(scene: dict, tmp_path: Path) -> None:
    lab = np.full((64, 64), 2, dtype=np.int16)
    lab[:, :10] = -1  # nodata
    lab[30:, 30:] = 3
    path = write_tif(tmp_path / "lab.tif", lab, nodata=-1)
    cfg = _cfg(scene, path=str(path))
    out = rasterio.open(prepare(cfg, tmp_path / "run").labels).read(1)
    assert (out[:, :10] == IGNORE_INDEX).all()
    assert (out[30:, 30:] == 2).all() and (out[10:30, 10:] == 1).all()


def test_unknown_label_values_are_listed(scene: dict, tmp_path: Path) -> None:
    cfg = _cfg(scene, classes={1: "water", 2: "forest"})
    with pytest.raises(
        InputError, match=r"labels.gpkg: label values not listed in classes: 'field'.*ignore_unknown"
    ):
        prepare(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "prepared").exists()  # nothing half-written


def test_unknown_raster_label_values_leave_nothing_behind(scene: dict, tmp_path: Path) -> None:
    lab = np.full((64, 64), 1, dtype=np.uint8)
    lab[40:, 40:] = 9
    lab[0, 63] = 7
    path = write_tif(tmp_path / "lab.tif", lab)
    cfg = _cfg(scene, path=str(path))
    with pytest.raises(InputError, match=r"lab.tif: label values not listed in classes: 7, 9;"):
        prepare(cfg, tmp_path / "run")
    assert list((tmp_path / "run").iterdir()) == []  # the temporary folder is gone, no prepared/


def test_ignore_unknown_makes_them_unlabelled(scene: dict, tmp_path: Path) -> None:
    cfg = _cfg(scene, classes={1: "water", 2: "forest"}, ignore_unknown=True)
    lab = rasterio.open(prepare(cfg, tmp_path / "run").labels).read(1)
    # the 'field' polygon is dropped: forest below it stays
    assert (lab[8:24, 40:56] == 1).all()


def test_missing_column_lists_columns(scene: dict, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"no column 'klass' \(columns: cover\)"):
        prepare(_cfg(scene, column="klass"), tmp_path / "run")


def test_labels_outside_the_image(scene: dict, tmp_path: Path) -> None:
    far = gpd.GeoDataFrame({"cover": ["water"]}, geometry=[pixel_box(1000, 1000, 1010, 1010)], crs=CRS)
    path = tmp_path / "far.gpkg"
    far.to_file(path)
    with pytest.raises(InputError, match="far.gpkg: no label geometry overlaps the image"):
        prepare(_cfg({**scene, "labels": path}), tmp_path / "run")


def test_missing_and_unreadable_images(scene: dict, tmp_path: Path) -> None:
    bad = tmp_path / "broken.tif"
    bad.write_bytes(b"this is not a tiff")
    cfg = _cfg(scene, images=[str(bad)])
    with pytest.raises(DataError, match="broken.tif: not a readable raster"):
        prepare(cfg, tmp_path / "run")
    cfg = _cfg(scene, images=[str(tmp_path / "nope.tif")])
    with pytest.raises(InputError, match="nope.tif: file not found"):
        prepare(cfg, tmp_path / "run")


def test_shifted_grids_are_stacked_over_their_common_area(scene: dict, tmp_path: Path) -> None:
    other_data = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) + 1
    other = write_tif(tmp_path / "shifted.tif", other_data, transform=TRANSFORM @ TRANSFORM.translation(3, 0))
    prep = prepare(_cfg(scene, images=[str(scene["images"][0]), str(other)]), tmp_path / "run")
    assert prep.grid.width == 61 and prep.grid.height == 64
    assert prep.grid.transform == TRANSFORM @ TRANSFORM.translation(3, 0)  # intersection, on the pixel grid
    with rasterio.open(prep.image) as src, rasterio.open(scene["images"][0]) as b1:
        img = src.read()
        first = b1.read(1).astype(np.float32)
    np.testing.assert_array_equal(img[1], other_data[:, :61].astype(np.float32))  # no resampling shift
    np.testing.assert_array_equal(img[0][4:], first[4:, 3:])


def test_scene_json_records_classes(scene: dict, tmp_path: Path) -> None:
    prepare(_cfg(scene), tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "prepared" / "scene.json").read_text())
    assert [c["name"] for c in meta["classes"]] == ["water", "forest", "field"]
    assert meta["grid"]["crs"] == CRS


def test_raster_labels_outside_the_image(scene: dict, tmp_path: Path) -> None:
    far = TRANSFORM @ TRANSFORM.translation(500, 0)
    path = write_tif(tmp_path / "far.tif", np.ones((64, 64), np.uint8), transform=far)
    with pytest.raises(InputError, match="far.tif: the label raster does not overlap the image"):
        prepare(_cfg(scene, path=path), tmp_path / "run")


def test_raster_labels_on_another_grid_are_warped_with_nearest(scene: dict, tmp_path: Path) -> None:
    # labels at 5 m (twice the resolution), same origin: class 3 on rows 16..47 of the 10 m grid
    lab = np.full((128, 128), 1, np.uint8)
    lab[32:96, :] = 3
    fine = TRANSFORM @ TRANSFORM.scale(0.5)
    path = write_tif(tmp_path / "fine.tif", lab, transform=fine)
    out = rasterio.open(prepare(_cfg(scene, path=path), tmp_path / "run").labels).read(1)
    assert (out[16:48, 4:] == 2).all() and (out[48:, 4:] == 0).all() and (out[4:16, :] == 0).all()


def test_one_class_outlines_with_a_background(scene: dict, tmp_path: Path) -> None:
    cfg = _cfg(scene, classes={0: "other", 1: "field"}, column=None, value=1, background=0)
    lab = rasterio.open(prepare(cfg, tmp_path / "run").labels).read(1)
    # every polygon is burnt as 'field' (index 1); outside polygons is 'other' (index 0): here all is covered
    assert (lab[4:, :] == 1).all()
    gdf = gpd.GeoDataFrame({"cover": ["x"]}, geometry=[pixel_box(8, 40, 24, 56)], crs=CRS)
    gdf.to_file(tmp_path / "one.gpkg")
    cfg = _cfg(scene, classes={0: "other", 1: "field"}, path=tmp_path / "one.gpkg", value=1, background=0)
    lab = rasterio.open(prepare(cfg, tmp_path / "run2").labels).read(1)
    assert (lab[8:24, 40:56] == 1).all() and (lab == 1).sum() == 256
    assert (lab[4:, :] != IGNORE_INDEX).all()


def test_label_value_must_be_a_class(scene: dict) -> None:
    with pytest.raises(InputError, match=r"labels.value 5 is not a class id"):
        _cfg(scene, column=None, value=5)
    with pytest.raises(InputError, match="give either column or value"):
        _cfg(scene, value=1)


def test_shapefile_labels(scene: dict, tmp_path: Path) -> None:
    gpd.read_file(scene["labels"]).to_file(tmp_path / "labels.shp")
    lab = rasterio.open(
        prepare(_cfg(scene, path=tmp_path / "labels.shp", column="cover"), tmp_path / "r").labels
    )
    assert (lab.read(1)[8:24, 40:56] == 2).all()
