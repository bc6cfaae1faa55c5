"""Inputs as users have them (issue 5, the rest): clamped percentile normalisation at training and predict,
per-band nodata through the warp, Sentinel-2 JPEG2000 granules, the MODIS MOD13Q1 preset."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from conftest import CRS, TRANSFORM, write_tif
from helpers import PickBand0
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.drivers import raster_driver_extensions
from rasterio.transform import rowcol
from rasterio.warp import transform as warp_points
from rasterio.windows import Window
from shapely.geometry import box

from eoforge.chips.make import make_chips
from eoforge.cli import cli
from eoforge.config import ChipsConfig, SplitConfig, parse_config
from eoforge.data import ChipDataset
from eoforge.geo import Grid
from eoforge.normalise import clamps
from eoforge.package import ClassInfo, PackageMeta, Predictor, save_package
from eoforge.package.onnx import OnnxPredictor
from eoforge.predict import predict
from eoforge.prepare import prepare
from eoforge.prepare.align import GridReader
from eoforge.prepare.recipe import Recipe, RecipeSource
from eoforge.prepare.stats import Histogram

X0, Y0 = TRANSFORM.c, TRANSFORM.f


def _prepare(
    tmp: Path, images: list, crs: str = CRS, bounds: tuple | None = None, **sections: dict
) -> object:
    b = bounds or (X0, Y0 - 640, X0 + 640, Y0)
    gpd.GeoDataFrame({"c": [1]}, geometry=[box(*b)], crs=crs).to_file(tmp / "lab.gpkg")
    inputs = {
        "images": images,
        "labels": {"path": str(tmp / "lab.gpkg"), "value": 1, "background": 2},
        "classes": {1: "a", 2: "b"},
        **sections.pop("inputs", {}),
    }
    cfg = parse_config({"inputs": inputs, **sections})
    return prepare(cfg.inputs, tmp / "run", block=40, prep=cfg.prepare)


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


# --- 1. percentile normalisation: streaming estimate within its stated bound, clipped alike everywhere -------


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=300),
    st.integers(0, 30),
    st.floats(0, 100),
)
def test_histogram_percentile_within_one_bin_of_the_exact_inverted_cdf(
    values: list[float], ties: int, q: float
) -> None:
    v = np.asarray(values + values[:1] * ties, np.float64)  # ties: repeated values
    h = Histogram(np.array([v.min()]), np.array([v.max()]))
    for part in np.array_split(v, 3):  # streamed in blocks
        h.update(part[None].astype(np.float32).astype(np.float64))
    est = h.quantiles((q,))[0, 0]
    exact = np.percentile(v, q, method="inverted_cdf")
    assert abs(est - exact) <= h.width[0] * (1 + 1e-9) + 1e-9 * max(1.0, abs(exact))


def test_percentile_clip_at_training_and_predict(tmp_path: Path) -> None:
    """Percentiles match numpy within the stored accuracy; chips (training) and the torch and ONNX predictors
    clip the stretch to [0, 1] identically; a predicted map shows the clip."""
    rng = np.random.default_rng(5)
    data = rng.gamma(2.0, 50.0, (64, 64)).astype(np.float32)
    data[:2, :2] = -1
    b = write_tif(tmp_path / "b.tif", data, nodata=-1)
    prep = _prepare(tmp_path, [str(b)], prepare={"normalize": "percentile", "clip": [2, 98]})
    v = data[data != -1].astype(np.float64)
    acc = prep.normalization["percentile_accuracy"][0]
    assert acc == pytest.approx((v.max() - v.min()) / 4096)
    lo, hi = prep.mean[0], prep.mean[0] + prep.std[0]
    for q, got in ((2, lo), (98, hi)):
        assert abs(got - np.percentile(v, q, method="inverted_cdf")) <= acc
        # numpy's default (linear between neighbouring ranks) adds at most the gap between those sorted values
        s, rank = np.sort(v), int(np.ceil(q / 100 * v.size))
        assert abs(got - np.percentile(v, q)) <= acc + s[rank] - s[rank - 2]
    assert clamps(prep.recipe) and prep.recipe["normalize"] == {"mode": "percentile", "clip": [2.0, 98.0]}
    assert prep.recipe["version"] == 2 and not clamps(
        {**prep.recipe, "version": 1}
    )  # older packages: no clip
    chips_cfg = ChipsConfig(size=32, stride=32, min_valid=0.1, split=SplitConfig(val=0.0, test=0.0))
    store = make_chips(prep, chips_cfg, tmp_path / "run")
    ds = ChipDataset(store, "train", prep.mean, prep.std, clamp=clamps(prep.recipe))
    raw = np.stack([np.asarray(store.arrays()[0][j]) for j in ds.indices])
    chips = torch.stack([ds[i]["image"] for i in range(len(ds))]).numpy()
    expected = np.nan_to_num(np.clip((raw - lo) / (hi - lo), 0, 1))
    np.testing.assert_allclose(chips, expected, atol=1e-6)
    assert chips.min() == 0 and chips.max() == 1 and ((chips == 1).mean() > 0.01)
    meta = PackageMeta(
        arch="test-pick-band0",
        encoder="none",
        bands=prep.bands,
        mean=prep.mean,
        std=prep.std,
        nodata=None,
        chip_size=32,
        classes=[ClassInfo(i, f"c{i}", "#112233") for i in range(3)],
        tile=64,
        overlap=0,
        recipe=prep.recipe,
    )
    pkg = save_package(tmp_path / "model", PickBand0(1, 3), meta, {})
    torch_pred = Predictor(PickBand0(1, 3), meta)
    np.testing.assert_allclose(torch_pred.normalize(raw).numpy(), chips, atol=1e-6)
    onnx_pred = OnnxPredictor.from_package(pkg)
    np.testing.assert_allclose(onnx_pred.normalize(raw).numpy(), chips, atol=1e-6)
    item = json.loads((pkg / "item.json").read_text())
    assert "clipped to [0, 1]" in json.dumps(item)
    out = _read(predict(pkg, [b], tmp_path / "map.tif").path)[0]
    # band 0 clipped to [0, 1]: only classes 0 and 1 (without the clip, values above 1.5 give class 2)
    assert set(np.unique(out[2:, 2:])) == {0, 1}
    assert ((data - lo) / (hi - lo) > 1.5).any()
    unclamped = Predictor(PickBand0(1, 3), dataclasses.replace(meta, recipe=None))
    assert unclamped.normalize(raw).numpy().max() > 1.5


# --- 2. per-band nodata of a multi-band file that is warped ------------------------------------------------


def _three_band(tmp: Path) -> tuple[Path, np.ndarray]:
    """3-band uint16 (40 x 40, 20 m): each band has its own nodata value b+1 in its own region; band 0's valid
    value is band 1's nodata value (2), so one nodata shared by the bands masks the wrong pixels."""
    data = np.full((3, 40, 40), 7, np.uint16)
    data[0] = 2  # band 0 is 2 (band 1's nodata value) everywhere...
    data[0, :, :10] = 1  # ...except its own nodata 1 in the left quarter
    data[1, :10, :] = 2  # band 1: nodata 2 in the top quarter
    data[2, 30:, 30:] = 3  # band 2: nodata 3 in the bottom-right corner
    return write_tif(tmp / "three.tif", data, transform=Affine(20, 0, X0, 0, -20, Y0)), data


def _per_band_vrt(tif: Path, out: Path) -> Path:
    """A VRT (as gdalbuildvrt writes) giving each band of ``tif`` its own nodata value: 1, 2, 3."""
    bands = "".join(
        f'<VRTRasterBand dataType="UInt16" band="{b}"><NoDataValue>{b}</NoDataValue><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">{tif.name}</SourceFilename><SourceBand>{b}</SourceBand>'
        "</SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    with rasterio.open(tif) as src:
        wkt, gt = src.crs.to_wkt(), ", ".join(repr(v) for v in src.transform.to_gdal())
    out.write_text(
        f'<VRTDataset rasterXSize="40" rasterYSize="40"><SRS>{wkt}</SRS><GeoTransform>{gt}</GeoTransform>'
        f"{bands}</VRTDataset>"
    )
    return out


def test_per_band_nodata_of_a_reprojected_multiband_file(tmp_path: Path) -> None:
    tif, _ = _three_band(tmp_path)
    vrt = _per_band_vrt(tif, tmp_path / "three.vrt")
    with rasterio.open(vrt) as src:
        assert src.nodatavals == (1.0, 2.0, 3.0)
    # the file's per-band nodatavals, then the config's per-band list on the untagged file
    for images, nodata in (([vrt], None), ([tif], (1.0, 2.0, 3.0))):
        recipe = Recipe(bands=("a", "b", "c"), crs="EPSG:32634", resolution=10.0, nodata=nodata)
        with RecipeSource(recipe, images) as src:
            assert src.grid.crs == "EPSG:32634"
            img = src.read()
            grid = src.grid
        # centres of the source regions (left: band 0's nodata, top: band 1's, bottom-right: band 2's, and a
        # pixel valid in every band) located on the reprojected grid
        xs, ys = (X0 + 110, X0 + 410, X0 + 710, X0 + 710), (Y0 - 410, Y0 - 110, Y0 - 710, Y0 - 410)
        px, py = warp_points(CRS, "EPSG:32634", list(xs), list(ys))
        (r_l, c_l), (r_t, c_t), (r_b, c_b), (r_v, c_v) = [
            rowcol(grid.transform, x, y) for x, y in zip(px, py, strict=True)
        ]
        assert np.isnan(img[0, r_l, c_l]) and not np.isnan(img[1:, r_l, c_l]).any()
        assert np.isnan(img[1, r_t, c_t]) and not np.isnan(img[[0, 2], r_t, c_t]).any()
        assert np.isnan(img[2, r_b, c_b]) and not np.isnan(img[:2, r_b, c_b]).any()
        assert not np.isnan(img[:, r_v, c_v]).any()
        # no valid value is mixed with a nodata value by the bilinear warp: constants stay exact
        for b, value in ((0, 2.0), (1, 7.0), (2, 7.0)):
            ok = ~np.isnan(img[b])
            assert ok.mean() > 0.3
            np.testing.assert_array_equal(img[b][ok], value)


def test_per_band_nodata_with_an_alpha_band_when_warped(tmp_path: Path) -> None:
    d = np.full((4, 8, 8), 7, np.uint16)
    d[0, :, :2] = 1  # band 0: nodata 1
    d[1, :2, :] = 2  # band 1: nodata 2
    d[3] = 65535
    d[3, 6:, :] = 0  # alpha: the bottom two rows are transparent
    with rasterio.open(
        tmp_path / "rgba.tif", "w", driver="GTiff", width=8, height=8, count=4, dtype="uint16", crs=CRS,
        transform=Affine(20, 0, X0, 0, -20, Y0), photometric="RGB", ALPHA="YES",
    ) as dst:  # fmt: skip
        dst.write(d)
    grid = Grid(CRS, TRANSFORM, 16, 16)
    with GridReader(tmp_path / "rgba.tif", grid, "nearest", [1.0, 2.0, None]) as r:
        assert r.warped and r.count == 3  # alpha is a mask, never a band
        img = r.read(Window(0, 0, 16, 16))
    assert np.isnan(img[:, 12:]).all()  # transparent rows
    assert np.isnan(img[0, :12, :4]).all() and np.isnan(img[1, :4]).all()
    assert (np.isnan(img).sum(axis=(1, 2)) == [64 + 48, 64 + 64, 64]).all()
    assert (img[~np.isnan(img)] == 7).all()


# --- 3. Sentinel-2 JPEG2000 granule files at 10/20/60 m ------------------------------------------------------


def _jp2(path: Path, dn: np.ndarray, res: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "JP2OpenJPEG",
        "width": dn.shape[1],
        "height": dn.shape[0],
        "count": 1,
        "dtype": "uint16",
        "crs": CRS,
        "transform": Affine(res, 0, X0, 0, -res, Y0),
        "QUALITY": 100,
        "REVERSIBLE": "YES",  # lossless, as the S2 products' JPEG2000
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(dn[None])
    return path


def test_sentinel2_jp2_granule_at_three_resolutions_with_ndvi(tmp_path: Path) -> None:
    assert raster_driver_extensions().get("jp2") == "JP2OpenJPEG", "GDAL lacks the JP2OpenJPEG driver"
    safe = tmp_path / "S2B_MSIL2A_20230801T100031_N0509_R122_T33TWM_20230801T130000.SAFE"
    img_data = safe / "GRANULE" / "L2A_T33TWM_A033000_20230801T100031" / "IMG_DATA"
    n = 96  # 960 m: whole 60 m pixels
    red = np.where(np.arange(n)[None, :] < 48, 2000, 4000).repeat(n, 0).astype(np.uint16)  # 0.1 | 0.3
    red[:4, :4] = 0  # the product's fill value (JP2 files do not tag it)
    nir = np.full((n, n), 6000, np.uint16)  # 0.5
    x20 = np.arange(48) * 20 + 10  # x of each 20 m pixel centre (m from the left edge)
    swir = (1000 + 2 * x20[None, :]).repeat(48, 0).astype(np.uint16)  # a ramp: bilinear keeps it exact
    coastal = np.full((16, 16), 1500, np.uint16)
    coastal[8:, 8:] = 2500
    files = [
        _jp2(img_data / "R10m" / "T33TWM_20230801T100031_B04_10m.jp2", red, 10),
        _jp2(img_data / "R10m" / "T33TWM_20230801T100031_B08_10m.jp2", nir, 10),
        _jp2(img_data / "R20m" / "T33TWM_20230801T100031_B11_20m.jp2", swir, 20),
        _jp2(img_data / "R60m" / "T33TWM_20230801T100031_B01_60m.jp2", coastal, 60),
    ]
    with rasterio.open(files[0]) as src:
        assert src.driver == "JP2OpenJPEG" and src.crs.to_string() == CRS and src.transform == TRANSFORM
    prep = _prepare(
        tmp_path,
        [str(img_data / "R*m" / "*.jp2")],
        bounds=(X0, Y0 - 960, X0 + 960, Y0),
        inputs={"sensor": "sentinel2-l2a"},
        prepare={"indices": ["NDVI"]},
    )
    assert prep.bands == ["coastal", "red", "nir", "swir16", "NDVI"]
    assert prep.grid.transform == TRANSFORM and (prep.grid.height, prep.grid.width) == (96, 96)
    img = _read(prep.image)
    # baseline 05.09: reflectance = DN / 10000 - 0.1
    assert img[1, 50, 10] == pytest.approx(0.1) and img[1, 50, 80] == pytest.approx(0.3)
    assert img[2, 50, 50] == pytest.approx(0.5)
    assert np.isnan(img[1, :4, :4]).all() and not np.isnan(img[2, :4, :4]).any()  # fill 0 -> band nodata
    assert img[4, 50, 10] == pytest.approx((0.5 - 0.1) / (0.5 + 0.1), rel=1e-5)
    assert img[4, 50, 80] == pytest.approx((0.5 - 0.3) / (0.5 + 0.3), rel=1e-5)
    assert np.isnan(img[4, :4, :4]).all()
    x10 = np.arange(n) * 10 + 5  # 10 m pixel centres
    np.testing.assert_allclose(img[3, 20, 2:-2], (1000 + 2 * x10[2:-2]) * 1e-4 - 0.1, atol=2e-6)
    assert img[0, 10, 10] == pytest.approx(0.05) and img[0, 80, 80] == pytest.approx(0.15)  # 60 m interiors
    # Level-1C names (no resolution suffix), baseline 03.00: no offset
    l1c = tmp_path / "S2B_MSIL1C_20210801T100031_N0301_R122_T33TWM_20210801T110000.SAFE" / "IMG_DATA"
    l1c.mkdir(parents=True)
    shutil.copy(files[0], l1c / "T33TWM_20210801T100031_B04.jp2")
    shutil.copy(files[1], l1c / "T33TWM_20210801T100031_B08.jp2")
    l1c_recipe = Recipe(bands=("red", "nir"), sensor="sentinel2-l1c", indices=("NDVI",))
    with RecipeSource(l1c_recipe, [str(l1c / "*.jp2")]) as s:
        raw = s.read()
    assert raw[0, 50, 10] == pytest.approx(0.2) and raw[2, 50, 10] == pytest.approx(
        (0.6 - 0.2) / 0.8, rel=1e-5
    )


# --- 4. MODIS MOD13Q1 (AppEEARS-style GeoTIFF exports) ----------------------------------------------------

SINU = "+proj=sinu +lon_0=0 +x_0=0 +y_0=0 +R=6371007.181 +units=m +no_defs"
MODIS_T = Affine(231.656358, 0, 1111950.52, 0, -231.656358, 5559752.6)


def _modis(tmp: Path, layer: str, data: np.ndarray, nodata: float | None) -> Path:
    return write_tif(
        tmp / f"MOD13Q1.061__250m_16_days_{layer}_doy2023177_aid0001.tif", data, nodata, MODIS_T, SINU
    )


def test_modis_mod13q1_preset(tmp_path: Path) -> None:
    n = 24
    ndvi = np.full((n, n), 7500, np.int16)
    ndvi[0, :] = -3000  # NDVI fill
    evi = np.full((n, n), 4200, np.int16)
    red = np.full((n, n), 350, np.int16)
    red[:, 0] = -1000  # reflectance fill
    nir = np.full((n, n), 3100, np.int16)
    rel = np.zeros((n, n), np.int8)
    rel[10:14, 10:14] = 3  # cloudy
    rel[20:, 20:] = 1  # marginal: kept
    layers = {"NDVI": (ndvi, -3000), "EVI": (evi, -3000), "red_reflectance": (red, -1000)}
    layers |= {"NIR_reflectance": (nir, -1000), "pixel_reliability": (rel, -1)}
    layers |= {
        "VI_Quality": (np.zeros((n, n), np.uint16), 65535),
        "composite_day_of_the_year": (np.full((n, n), 180, np.int16), -1),
    }
    for layer, (data, nd) in layers.items():
        _modis(tmp_path, layer, data, nd)
    bounds = (MODIS_T.c, MODIS_T.f - n * MODIS_T.a, MODIS_T.c + n * MODIS_T.a, MODIS_T.f)
    prep = _prepare(
        tmp_path,
        [str(tmp_path / "MOD13Q1.061__*.tif")],
        crs=SINU,
        bounds=bounds,
        inputs={"sensor": "modis-mod13q1", "masks": [{"band": "pixel_reliability", "classes": ["cloudy"]}]},
    )
    assert prep.bands == ["NDVI", "EVI", "red", "nir08"]
    assert prep.recipe["masks"] == [{"band": "pixel_reliability", "classes": [3]}]
    img = _read(prep.image)
    assert img[:, 5, 5].tolist() == pytest.approx([0.75, 0.42, 0.035, 0.31])
    assert np.isnan(img[0, 0]).all() and not np.isnan(img[1:, 0, 1:]).any()  # per-band fill values
    assert np.isnan(img[2, 1:, 0]).all() and not np.isnan(img[[0, 1, 3], 1:, 0]).any()
    assert np.isnan(img[:, 10:14, 10:14]).all() and not np.isnan(img[:, 20:, 20:]).any()
    listed = CliRunner().invoke(cli, ["sensors"], terminal_width=250)
    assert listed.exit_code == 0 and "modis-mod13q1" in listed.output and "pixel_reliability" in listed.output


def test_modis_mod09ga_reflectance_and_state_bits(tmp_path: Path) -> None:
    t500 = Affine(463.312716, 0, MODIS_T.c, 0, -463.312716, MODIS_T.f)
    t1km = Affine(926.625433, 0, MODIS_T.c, 0, -926.625433, MODIS_T.f)
    red = np.full((8, 8), 520, np.int16)
    red[7, 7] = -28672  # fill
    state = np.zeros((4, 4), np.uint16)
    state[1, 2] = 0b1  # bit 0: cloudy -> the 2 x 2 500 m pixels below it
    stem = "MOD09GA.061_{}_doy2023177_aid0001.tif"
    write_tif(tmp_path / stem.format("sur_refl_b01_1"), red, None, t500, SINU)
    write_tif(tmp_path / stem.format("sur_refl_b02_1"), np.full((8, 8), 2950, np.int16), None, t500, SINU)
    write_tif(tmp_path / stem.format("state_1km_1"), state, None, t1km, SINU)
    recipe = Recipe(bands=("red", "nir08"), sensor="modis-mod09ga", masks=(("state_1km", "bits", (0,)),))
    with RecipeSource(recipe, [str(tmp_path / "MOD09GA.061_*.tif")]) as src:
        img = src.read()
    assert src.band_names == ["red", "nir08"] and img.shape == (2, 8, 8)
    assert img[:, 0, 0].tolist() == pytest.approx([0.052, 0.295])
    assert np.isnan(img[:, 2:4, 4:6]).all() and (~np.isnan(img[1])).sum() == 64 - 4
    assert np.isnan(img[0, 7, 7]) and not np.isnan(img[1, 7, 7])
