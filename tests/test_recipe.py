"""The preparation recipe on generated raw rasters: alignment, mosaics across UTM zones, sensor presets, indices,
masks, AOI, normalisation, and the same recipe applied again at predict time."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine
from conftest import CRS, TRANSFORM, write_tif
from helpers import PickBand0
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.warp import transform as warp_points
from shapely.geometry import Polygon, box

from eoforge.config import parse_config
from eoforge.errors import InputError
from eoforge.package import ClassInfo, PackageMeta, save_package
from eoforge.predict import predict
from eoforge.prepare import prepare
from eoforge.prepare.recipe import Recipe, RecipeSource
from eoforge.prepare.sensors import get_sensor, scale_offset

X0, Y0 = TRANSFORM.c, TRANSFORM.f


def _labels(path: Path, crs: str = CRS, bounds: tuple[float, ...] | None = None) -> Path:
    b = bounds or (X0, Y0 - 640, X0 + 640, Y0)
    gpd.GeoDataFrame({"c": [1]}, geometry=[box(*b)], crs=crs).to_file(path)
    return path


def _run(tmp: Path, images: list, labels: Path | None = None, **sections: dict) -> object:
    inputs = {
        "images": images,
        "labels": {"path": str(labels or _labels(tmp / "lab.gpkg")), "value": 1, "background": 2},
        "classes": {1: "a", 2: "b"},
        **sections.pop("inputs", {}),
    }
    cfg = parse_config({"inputs": inputs, **sections})
    return prepare(cfg.inputs, tmp / "run", block=40, prep=cfg.prepare)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


def test_20m_band_lands_on_the_right_10m_pixels(tmp_path: Path) -> None:
    fine = write_tif(tmp_path / "b10.tif", np.ones((64, 64), np.float32))
    pattern = (np.arange(32)[None, :] * 20 + 10).astype(np.float32).repeat(32, 0)  # x of each 20 m centre
    pattern[5, 7] = 5000  # one marked pixel
    t20 = Affine(20, 0, X0, 0, -20, Y0)
    coarse = write_tif(tmp_path / "b20.tif", pattern, transform=t20)
    recipe = Recipe(bands=("b10", "b20"), resampling="nearest")
    with RecipeSource(recipe, [fine, coarse]) as src:
        assert src.grid.transform == TRANSFORM and (src.grid.height, src.grid.width) == (64, 64)
        img = src.read()
    np.testing.assert_array_equal(img[1], np.kron(pattern, np.ones((2, 2), np.float32)))
    assert (img[1][10:12, 14:16] == 5000).all() and (img[1] == 5000).sum() == 4
    pattern[5, 7] = 150
    write_tif(coarse, pattern, transform=t20)
    with RecipeSource(Recipe(bands=("b10", "b20"), resampling="bilinear"), [fine, coarse]) as src:
        img = src.read()
    # a linear ramp resampled bilinearly gives each 10 m pixel its own centre x (interior pixels)
    expected = (np.arange(64) * 10 + 5).astype(np.float32)
    np.testing.assert_allclose(img[1][2:-2, 1:-1], np.broadcast_to(expected[1:-1], (60, 62)), atol=1e-3)


def _utm_tile(
    path: Path, crs: str, bounds: tuple[float, float, float, float], value: float, res: float
) -> Path:
    w = round((bounds[2] - bounds[0]) / res)
    h = round((bounds[3] - bounds[1]) / res)
    return write_tif(
        path,
        np.full((h, w), value, np.float32),
        transform=Affine(res, 0, bounds[0], 0, -res, bounds[3]),
        crs=crs,
    )


def test_two_utm_zones_mosaic_without_gap_or_seam(tmp_path: Path) -> None:
    # the target area straddles 18 deg E (zone 33 | zone 34) around 45 deg N; 100 m pixels
    x0, y0, res = 734000.0, 5000000.0, 100.0
    left = (x0, y0 - 3200, x0 + 3200, y0)
    a = _utm_tile(tmp_path / "tile33.tif", "EPSG:32633", left, 1.0, res)
    right33 = (x0 + 3200, y0 - 3200, x0 + 6400, y0)
    xs, ys = warp_points(
        "EPSG:32633", "EPSG:32634", [right33[0], right33[2]] * 2, [right33[1]] * 2 + [right33[3]] * 2
    )
    pad = 500
    b34 = (
        (min(xs) - pad) // res * res,
        (min(ys) - pad) // res * res,
        (max(xs) + pad) // res * res,
        (max(ys) + pad) // res * res,
    )
    b = _utm_tile(tmp_path / "tile34.tif", "EPSG:32634", b34, 2.0, res)
    recipe = Recipe(bands=("v",), resolution=res)
    with RecipeSource(recipe, [[a, b]]) as src:
        g = src.grid
        assert g.crs == "EPSG:32633" and g.transform.a == res
        col0, row0 = ~g.transform * (x0, y0)
        assert float(col0).is_integer() and float(row0).is_integer()
        img = src.read()[0]
    r0, c0 = int(row0), int(col0)
    area = img[r0 : r0 + 32, c0 : c0 + 64]
    assert not np.isnan(area).any()  # no gap anywhere over the two tiles' common target area
    assert (area[:, :32] == 1).all() and (area[:, 32:] == 2).all()  # the seam sits exactly at the tile edge


def _s2(tmp: Path, rng: np.random.Generator) -> dict[str, Path]:
    """Raw Sentinel-2 L2A-like files (baseline 05.09: offset -1000): B03/B04/B08 at 10 m, B11 and SCL at 20 m."""
    d = tmp / "S2B_MSIL2A_20230601T100559_N0509_R022_T33TWM_20230601T130000.SAFE"
    d.mkdir()
    files = {}
    for band, res in (("B03", 10), ("B04", 10), ("B08", 10), ("B11", 20)):
        n = 640 // res
        data = rng.integers(1000, 6000, (n, n)).astype(np.uint16)
        data[:2, :2] = 0  # nodata corner
        t = Affine(res, 0, X0, 0, -res, Y0)
        files[band] = write_tif(d / f"T33TWM_20230601T100559_{band}_{res}m.tif", data, nodata=0, transform=t)
    scl = np.full((32, 32), 4, np.uint8)  # vegetation
    scl[20:24, 4:8] = 9  # cloud high probability
    scl[0:4, 28:32] = 3  # cloud shadow
    files["SCL"] = write_tif(
        d / "T33TWM_20230601T100559_SCL_20m.tif", scl, transform=Affine(20, 0, X0, 0, -20, Y0)
    )
    return files


def test_sensor_indices_and_scl_mask_then_recipe_reproduces_the_stack_at_predict(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    f = _s2(tmp_path, rng)
    images = [str(p) for p in f.values()]
    prep = _run(
        tmp_path,
        images,
        inputs={
            "sensor": "sentinel2-l2a",
            "masks": [{"band": "SCL", "classes": ["cloud_high", "cloud_shadow"]}],
        },
        prepare={"indices": ["NDVI", "NDWI"], "resampling": "bilinear"},
    )
    assert prep.bands == ["green", "red", "nir", "swir16", "NDVI", "NDWI"]
    assert prep.grid.transform == TRANSFORM and prep.grid.width == 64
    img = _read(prep.image)
    raw = {k: _read(f[k])[0].astype(np.float64) for k in ("B03", "B04", "B08")}
    refl = {k: v * 1e-4 - 0.1 for k, v in raw.items()}  # baseline 05.09: DN / 10000 - 0.1
    ok = ~np.isnan(img[4])
    np.testing.assert_allclose(img[1][ok], refl["B04"][ok], rtol=1e-5, atol=1e-6)
    ndvi = (refl["B08"] - refl["B04"]) / (refl["B08"] + refl["B04"])
    np.testing.assert_allclose(img[4][ok], ndvi[ok], rtol=1e-5, atol=1e-6)
    ndwi = (refl["B03"] - refl["B08"]) / (refl["B03"] + refl["B08"])
    np.testing.assert_allclose(img[5][ok], ndwi[ok], rtol=1e-5, atol=1e-6)
    assert np.isnan(img[:, 40:48, 8:16]).all()  # SCL cloud (20 m rows 20..23, cols 4..7) -> nodata
    assert np.isnan(img[:, 0:8, 56:64]).all()  # SCL shadow
    assert np.isnan(img[:, :2, :2]).all()  # nodata corner of every band
    assert not np.isnan(img[:, 30:38, 30:38]).any()
    assert ok.sum() == 64 * 64 - 64 - 64 - 4
    # the recipe stored with the scene (and the model) reproduces the stack from the raw files
    recipe = Recipe.from_json(json.loads((prep.root / "scene.json").read_text())["recipe"])
    assert recipe.masks == (("SCL", "classes", (9, 3)),)
    with RecipeSource(recipe, list(reversed(images))) as src:  # names, not order, match files to bands
        again = src.read()
        assert src.band_names == prep.bands and src.grid.same_as(prep.grid)
    np.testing.assert_array_equal(again, img)
    meta = PackageMeta(
        arch="test-pick-band0",
        encoder="none",
        bands=prep.bands,
        mean=[0.0] * 6,
        std=[0.13] * 6,  # band 0 (green, 0..0.5) / 0.13 -> classes 0..4 by value
        nodata=None,
        chip_size=32,
        classes=[ClassInfo(i, f"c{i}", "#112233") for i in range(5)],
        tile=64,
        overlap=0,
        recipe=prep.recipe,
    )
    pkg = save_package(tmp_path / "model", PickBand0(6, 5), meta, {})
    res = predict(pkg, images, tmp_path / "map.tif")
    out = _read(res.path)[0]
    scaled = np.nan_to_num(img[0] / np.float32(0.13))
    expected = np.argmin((scaled[None] - np.arange(5, dtype=np.float32)[:, None, None]) ** 2, axis=0)
    valid = ~np.isnan(img).all(axis=0)
    np.testing.assert_array_equal(out[valid], expected[valid])
    assert (out[~valid] == 255).all()


def test_landsat_qa_bits_and_scale(tmp_path: Path) -> None:
    t30 = Affine(30, 0, X0, 0, -30, Y0)
    stem = "LC08_L2SP_190029_20230601_20230607_02_T1"
    red_dn = np.full((20, 20), 10000, np.uint16)
    red_dn[0, 19] = 0  # the product's fill value, not tagged as nodata in the file
    red = write_tif(tmp_path / f"{stem}_SR_B4.TIF", red_dn, transform=t30)
    nir = write_tif(
        tmp_path / f"{stem}_SR_B5.TIF", np.full((20, 20), 20000, np.uint16), nodata=0, transform=t30
    )
    qa = np.full((20, 20), 1 << 6, np.uint16)  # clear
    qa[2:5, 2:5] |= 1 << 3  # cloud
    qa[10:12, 0:3] |= 1 << 4  # cloud shadow
    qa[15, 15] |= 1 << 5  # snow: not masked
    qpath = write_tif(tmp_path / f"{stem}_QA_PIXEL.TIF", qa, transform=t30)
    recipe = Recipe(bands=("red", "nir08"), sensor="landsat8-c2l2", masks=(("QA_PIXEL", "bits", (3, 4)),))
    with RecipeSource(recipe, [red, nir, qpath]) as src:
        img = src.read()
    assert np.isnan(img[:, 2:5, 2:5]).all() and np.isnan(img[:, 10:12, 0:3]).all()
    assert np.isnan(img[0]).sum() == 9 + 6 + 1 and np.isnan(img[0, 0, 19]) and not np.isnan(img[1, 0, 19])
    np.testing.assert_allclose(img[0, 15, 15], 10000 * 2.75e-5 - 0.2, rtol=1e-6)
    np.testing.assert_allclose(img[1, 0, 0], 20000 * 2.75e-5 - 0.2, rtol=1e-6)


def test_alpha_band_is_a_mask_not_an_input(tmp_path: Path) -> None:
    data = np.stack(
        [np.full((16, 16), 7, np.uint16), np.full((16, 16), 255, np.uint16), np.full((16, 16), 9, np.uint16)]
    )
    data[1, :, :3] = 0  # transparent
    with rasterio.open(
        tmp_path / "rgba.tif",
        "w",
        driver="GTiff",
        width=16,
        height=16,
        count=3,
        dtype="uint16",
        crs=CRS,
        transform=TRANSFORM,
        alpha="YES",
    ) as dst:
        dst.write(data)
    with RecipeSource(Recipe(bands=("x", "y")), [tmp_path / "rgba.tif"]) as src:
        assert src.count == 2 and src.band_names == ["x", "y"]
        img = src.read()
    assert np.isnan(img[:, :, :3]).all() and (img[0, :, 3:] == 7).all() and (img[1, :, 3:] == 9).all()


def test_aoi_crops_the_grid_and_masks_outside(tmp_path: Path) -> None:
    b = write_tif(tmp_path / "b.tif", np.ones((64, 64), np.float32))
    tri = Polygon([(X0 + 100, Y0 - 100), (X0 + 400, Y0 - 100), (X0 + 100, Y0 - 400)])
    gpd.GeoDataFrame(geometry=[tri], crs=CRS).to_file(tmp_path / "aoi.gpkg")
    with RecipeSource(Recipe(bands=("b",)), [b], aoi=tmp_path / "aoi.gpkg") as src:
        assert src.grid.transform == Affine(10, 0, X0 + 100, 0, -10, Y0 - 100)
        assert (src.grid.height, src.grid.width) == (30, 30)
        img = src.read()[0]
    assert not np.isnan(img[0, 0]) and np.isnan(img[29, 29]) and 400 < (~np.isnan(img)).sum() < 500
    with pytest.raises(InputError, match="lies outside the data"):
        RecipeSource(Recipe(bands=("b",)), [b], aoi=[0.0, 0.0, 1.0, 1.0], aoi_crs="EPSG:4326")
    with RecipeSource(Recipe(bands=("b",)), [b], aoi=[X0, Y0 - 200, X0 + 300, Y0], aoi_crs=CRS) as src:
        assert (src.grid.height, src.grid.width) == (20, 30)


def test_normalisation_modes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.gamma(2.0, 50.0, (64, 64)).astype(np.float32)
    data[:3] = -1
    b = write_tif(tmp_path / "b.tif", data, nodata=-1)
    v = data[3:].astype(np.float64)
    for mode, off, scale in (
        ("zscore", v.mean(), v.std()),
        ("minmax", v.min(), v.max() - v.min()),
    ):
        prep = _run(
            tmp_path / mode, [str(b)], labels=_labels(tmp_path / f"{mode}.gpkg"), prepare={"normalize": mode}
        )
        assert prep.mean[0] == pytest.approx(off, rel=1e-9) and prep.std[0] == pytest.approx(scale, rel=1e-9)
    prep = _run(
        tmp_path / "pct",
        [str(b)],
        labels=_labels(tmp_path / "p.gpkg"),
        prepare={"normalize": "percentile", "clip": [2, 98]},
    )
    acc = prep.normalization["percentile_accuracy"][0]
    assert acc == pytest.approx((v.max() - v.min()) / 4096)
    lo, hi = np.percentile(v, [2, 98])
    assert abs(prep.mean[0] - lo) <= acc and abs(prep.mean[0] + prep.std[0] - hi) <= acc


def test_bad_inputs_are_one_line_errors(tmp_path: Path) -> None:
    b = write_tif(tmp_path / "b.tif", np.ones((16, 16), np.float32))
    far = write_tif(
        tmp_path / "far.tif", np.ones((16, 16), np.float32), transform=TRANSFORM * Affine.translation(1000, 0)
    )
    three = write_tif(tmp_path / "three.tif", np.ones((3, 16, 16), np.float32))
    with pytest.raises(InputError, match="far.tif: does not overlap"):
        RecipeSource(Recipe(bands=("a", "b")), [b, far])
    with pytest.raises(InputError, match="three.tif: 3 bands but b.tif of the same mosaic holds 1"):
        RecipeSource(Recipe(bands=("a",)), [[b, three]])
    with pytest.raises(InputError, match=r"unknown sensor 'sentinel3'.*sentinel2-l2a, landsat8-c2l2"):
        get_sensor("sentinel3")
    with pytest.raises(InputError, match="needs the swir22 band"):
        RecipeSource(Recipe(bands=("red", "nir"), indices=("NBR",)), [b, b])
    with pytest.raises(InputError, match="unknown spectral index 'NDVX'"):
        RecipeSource(Recipe(bands=("red", "nir"), indices=("NDVX",)), [b, b])
    with pytest.raises(InputError, match="b.tif: a mask with classes needs a single-band integer raster"):
        RecipeSource(Recipe(bands=("a",)), [b], masks=[(str(b), [1], [])])
    for e in (InputError,):
        assert e.__name__ == "InputError"
    nocrs = tmp_path / "nocrs.tif"
    with rasterio.open(nocrs, "w", driver="GTiff", width=4, height=4, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 4, 4), np.uint8))
    with pytest.raises(Exception, match="nocrs.tif: raster has no CRS"):
        RecipeSource(Recipe(bands=("a",)), [nocrs])


def test_s2_baseline_offset_from_the_product_name() -> None:
    s2 = get_sensor("sentinel2-l2a")
    assert scale_offset(s2, "B04", Path("S2A_MSIL2A_20210101T1_N0300_R1_T1.SAFE/x_B04.jp2")) == (1e-4, 0.0)
    assert scale_offset(s2, "B04", Path("S2A_MSIL2A_20220201T1_N0400_R1_T1.SAFE/x_B04.jp2")) == pytest.approx(
        (1e-4, -0.1)
    )
    assert s2.match(Path("T33TWM_20230601T100559_B8A_20m.jp2")) == "B8A"
    assert s2.match(Path("T33TWM_20230601T100559_TCI_10m.jp2")) == "TCI"


def test_cli_run_then_predict_on_raw_s2_files_at_three_resolutions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A SAFE-like IMG_DATA layout (10/20/60 m single-band files + SCL) with inputs.sensor and indices, by hand."""
    import yaml

    from eoforge.cli import main

    d = tmp_path / "S2A_MSIL2A_20240601T100601_N0510_R022_T33TWM_20240601T120000.SAFE" / "IMG_DATA"
    half = np.where(np.arange(96)[None, :] < 48, 800, 3000).repeat(96, 0)  # 960 m: whole 60 m pixels
    rng = np.random.default_rng(1)
    for band, res in (("B02", 10), ("B04", 10), ("B08", 10), ("B11", 20), ("B01", 60)):
        n = 960 // res
        data = half[:: res // 10, :: res // 10]
        data = (data + rng.integers(0, 200, (n, n)) + (1000 if band == "B08" else 0)).astype(np.uint16)
        (d / f"R{res}m").mkdir(parents=True, exist_ok=True)
        write_tif(d / f"R{res}m" / f"T33TWM_20240601T100601_{band}_{res}m.tif", data, nodata=0,
                  transform=Affine(res, 0, X0, 0, -res, Y0))  # fmt: skip
    scl = np.full((48, 48), 4, np.uint8)
    scl[:3, :3] = 9
    write_tif(d / "R20m" / "T33TWM_20240601T100601_SCL_20m.tif", scl, transform=Affine(20, 0, X0, 0, -20, Y0))
    geoms = [box(X0, Y0 - 960, X0 + 480, Y0), box(X0 + 480, Y0 - 960, X0 + 960, Y0)]
    gpd.GeoDataFrame({"c": ["dark", "bright"]}, geometry=geoms, crs=CRS).to_file(tmp_path / "lab.gpkg")
    cfg = {
        "inputs": {
            "images": ["S2A_*.SAFE/IMG_DATA/R*m/*.tif"],
            "sensor": "sentinel2-l2a",
            "masks": [{"band": "SCL", "classes": ["cloud_high"]}],
            "labels": {"path": "lab.gpkg", "column": "c"},
            "classes": {1: "dark", 2: "bright"},
        },
        "prepare": {"indices": ["NDVI"]},
        "chips": {
            "size": 32,
            "stride": 16,
            "min_valid": 0.3,
            "split": {"val": 0.2, "test": 0.2, "block_size": 32},
        },
        "model": {"arch": "unet", "encoder": "resnet18"},
        "train": {"epochs": 1, "batch_size": 4},
        "predict": {"overlap": 16, "tile": 64},
    }
    (tmp_path / "s2.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    main(["-q", "run", str(tmp_path / "s2.yaml"), "--out", str(out)])
    meta = json.loads((out / "model" / "eoforge.json").read_text())
    assert meta["bands"] == ["coastal", "blue", "red", "nir", "swir16", "NDVI"]
    assert meta["recipe"]["sensor"] == "sentinel2-l2a" and meta["recipe"]["masks"] == [
        {"band": "SCL", "classes": [9]}
    ]
    raw = sorted(str(p) for p in d.glob("R*m/*.tif"))
    main(["-q", "predict", str(out / "model"), *raw, "-o", str(tmp_path / "new_map.tif")])
    with rasterio.open(out / "map.tif") as a, rasterio.open(tmp_path / "new_map.tif") as b:
        assert b.transform == TRANSFORM and b.shape == (96, 96) and b.crs.to_string() == CRS
        m = b.read(1)
        np.testing.assert_array_equal(a.read(1), m)
    assert (m[:6, :6] == 255).all() and set(np.unique(m)) <= {1, 2, 255}


def test_gdal_mask_counts_when_the_file_is_warped(tmp_path: Path) -> None:
    fine = write_tif(tmp_path / "fine.tif", np.ones((32, 32), np.float32))
    profile = dict(driver="GTiff", width=16, height=16, count=1, dtype="uint16", crs=CRS)
    mask = np.full((16, 16), 255, np.uint8)
    mask[:4] = 0  # the first four 20 m rows are masked
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True),
        rasterio.open(tmp_path / "m20.tif", "w", transform=Affine(20, 0, X0, 0, -20, Y0), **profile) as dst,
    ):
        dst.write(np.full((1, 16, 16), 5, np.uint16))
        dst.write_mask(mask)
    with RecipeSource(Recipe(bands=("f", "m")), [fine, tmp_path / "m20.tif"]) as src:
        img = src.read()
    assert np.isnan(img[1, :8]).all() and (img[1, 8:] == 5).all() and not np.isnan(img[0]).any()


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.lists(st.one_of(st.none(), st.floats(-1e3, 1e3, width=32)), min_size=6, max_size=6),
        min_size=1,
        max_size=4,
    )
)
def test_mosaic_rules_pick_the_first_last_mean_and_median_valid_value(
    tiles: list[list[float | None]],
) -> None:
    from eoforge.prepare.align import combine

    arrays = [np.array([np.nan if v is None else v for v in t], np.float32).reshape(1, 2, 3) for t in tiles]
    stack = np.stack([a.ravel() for a in arrays])
    first, last = combine(arrays, "first").ravel(), combine(arrays, "last").ravel()
    mean, median = combine(arrays, "mean").ravel(), combine(arrays, "median").ravel()
    for px in range(6):
        vals = [v for v in stack[:, px] if not np.isnan(v)]
        if not vals:
            assert np.isnan([first[px], last[px], mean[px], median[px]]).all()
            continue
        assert first[px] == vals[0] and last[px] == vals[-1]
        assert mean[px] == pytest.approx(np.mean(vals), rel=1e-5, abs=1e-3)
        assert median[px] == pytest.approx(np.median(vals), rel=1e-5, abs=1e-3)


def test_sensor_bands_select_and_order_by_common_name(tmp_path: Path) -> None:
    f = _s2(tmp_path, np.random.default_rng(5))
    files = [f["B03"], f["B04"], f["B08"], f["SCL"]]
    with RecipeSource(Recipe(bands=("nir", "red"), sensor="sentinel2-l2a"), files) as src:
        img = src.read()
        assert src.band_names == ["nir", "red"] and src.count == 2
    np.testing.assert_allclose(img[0, 5, 5], _read(f["B08"])[0, 5, 5] * 1e-4 - 0.1, rtol=1e-5)
    with pytest.raises(
        InputError, match=r"no file for band\(s\) swir22 among the images \(found: green, red, nir\)"
    ):
        RecipeSource(Recipe(bands=("nir", "swir22"), sensor="sentinel2-l2a"), files)
    with pytest.raises(InputError, match="no sentinel2-l2a band name in the file name"):
        RecipeSource(
            Recipe(bands=("nir",), sensor="sentinel2-l2a"),
            [*files, write_tif(tmp_path / "x.tif", np.ones((4, 4)))],
        )


def test_vector_of_areas_to_exclude_and_class_mask_file(tmp_path: Path) -> None:
    b = write_tif(tmp_path / "b.tif", np.ones((32, 32), np.float32))
    gpd.GeoDataFrame(geometry=[box(X0, Y0 - 50, X0 + 50, Y0)], crs=CRS).to_crs("EPSG:4326").to_file(
        tmp_path / "exclude.gpkg"
    )  # another CRS: reprojected onto the grid
    cls = np.zeros((32, 32), np.uint8)
    cls[20:, 20:] = 3
    m = write_tif(tmp_path / "classes.tif", cls)
    masks = [(str(tmp_path / "exclude.gpkg"), [], []), (str(m), [3], [])]
    with RecipeSource(Recipe(bands=("b",)), [b], masks=masks) as src:
        img = src.read()[0]
    assert np.isnan(img[:5, :5]).all() and np.isnan(img[20:, 20:]).all()
    assert np.isnan(img).sum() == 25 + 144
