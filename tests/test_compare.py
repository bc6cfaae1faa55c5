"""Any map against any reference (raster in another CRS, polygons, points), and curve/averaged metrics."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from affine import Affine
from conftest import CRS, TRANSFORM, pixel_box, write_tif
from rasterio.warp import Resampling, calculate_default_transform, reproject
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from eoforge.errors import InputError
from eoforge.evaluate.compare import compare_map, evaluate_map
from eoforge.evaluate.curves import CurveAccumulator, averaged_metrics, plot_pr, plot_reliability, plot_roc


def _classes() -> np.ndarray:
    a = np.full((64, 64), 1, np.uint8)
    a[:, 32:] = 2
    a[40:, :20] = 3
    return a


def test_map_against_itself_is_perfect_and_against_a_shift_is_not(tmp_path: Path) -> None:
    a = _classes()
    m = write_tif(tmp_path / "map.tif", a, nodata=0)
    got = evaluate_map(m, m, tmp_path / "self", block=16)
    assert got["overall_accuracy"] == 1.0 and got["kappa"] == 1.0 and got["pixels"] == 64 * 64
    assert got["balanced_accuracy"] == 1.0 and got["macro_f1"] == 1.0
    assert json.loads((tmp_path / "self" / "metrics.json").read_text())["mean_iou"] == 1.0
    assert "<table>" in (tmp_path / "self" / "report.html").read_text()
    shifted = write_tif(tmp_path / "shift.tif", np.roll(a, 5, axis=1), nodata=0)
    got = evaluate_map(m, shifted, tmp_path / "shift", block=16)
    # the 5-column shift moves the 1|2 edge and the class-3 block: exactly these pixels disagree
    disagree = int((np.roll(a, 5, axis=1) != a).sum())
    assert got["pixels"] == 64 * 64
    assert got["overall_accuracy"] == pytest.approx(1 - disagree / 64**2)
    assert got["overall_accuracy"] < 1


def test_reference_raster_in_another_crs_and_grid(tmp_path: Path) -> None:
    a = _classes()
    m = write_tif(tmp_path / "map.tif", a)
    # the same classes on a WGS84 grid of different resolution, with nodata outside
    dst_crs = "EPSG:4326"
    tr, w, h = calculate_default_transform(CRS, dst_crs, 64, 64, *(500000.0, 4999360.0, 500640.0, 5000000.0))
    ref = np.zeros((h, w), np.uint8)
    reproject(
        a,
        ref,
        src_transform=TRANSFORM,
        src_crs=CRS,
        dst_transform=tr,
        dst_crs=dst_crs,
        resampling=Resampling.nearest,
        dst_nodata=0,
    )
    r = write_tif(tmp_path / "ref.tif", ref, nodata=0, transform=tr, crs=dst_crs)
    got = compare_map(m, r, block=32).metrics()
    assert got["pixels"] > 0.9 * 64 * 64  # edge pixels may fall outside the warped reference: ignored
    assert got["overall_accuracy"] > 0.97
    assert [c["id"] for c in got["classes"]] == [1, 2, 3]


def test_polygons_matched_by_name_and_points_by_id(tmp_path: Path) -> None:
    m = write_tif(tmp_path / "map.tif", _classes())
    polys = gpd.GeoDataFrame(
        {"lc": ["Crop", "water", "forest"]},
        geometry=[pixel_box(0, 0, 10, 10), pixel_box(0, 40, 10, 50), pixel_box(50, 0, 60, 10)],
        crs=CRS,
    ).to_crs("EPSG:3857")
    polys.to_file(tmp_path / "ref.gpkg")
    got = evaluate_map(
        m, tmp_path / "ref.gpkg", tmp_path / "o", column="lc", classes=["1=crop", "2=water", "3=forest"]
    )
    assert got["reference_kind"] == "polygons" and got["units"] == "pixels"
    assert got["pixels"] == pytest.approx(300, abs=12)  # 3 x 100 px, give or take the reprojected edges
    assert got["overall_accuracy"] == 1.0
    assert [c["name"] for c in got["classes"]] == ["crop", "water", "forest"]
    with pytest.raises(InputError, match="not classes: 'Crop'"):
        evaluate_map(m, tmp_path / "ref.gpkg", tmp_path / "o", column="lc")
    xs, ys = TRANSFORM * (np.array([5.5, 45.5, 5.5, 5.5, 100.0]), np.array([5.5, 5.5, 55.5, 55.5, 5.5]))
    pts = gpd.GeoDataFrame({"c": [1, 2, 3, 1, 2]}, geometry=gpd.points_from_xy(xs, ys), crs=CRS)
    pts.to_file(tmp_path / "pts.geojson")
    got = evaluate_map(m, tmp_path / "pts.geojson", tmp_path / "p", column="c")
    # the last point is outside the map; two points on one pixel both count; one of them is wrong
    assert got["pixels"] == 4 and got["units"] == "points"
    assert got["overall_accuracy"] == pytest.approx(0.75)
    assert got["confusion_matrix"] == [[1, 0, 1], [0, 1, 0], [0, 0, 1]]  # rows: reference


def test_reference_outside_the_map_is_one_clear_error(tmp_path: Path) -> None:
    m = write_tif(tmp_path / "map.tif", _classes())
    far = write_tif(tmp_path / "far.tif", _classes(), transform=Affine(10, 0, 0, 0, -10, 0))
    with pytest.raises(InputError, match="cover the same area"):
        compare_map(m, far)


def test_averaged_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 5, 3000)
    p = np.where(rng.random(3000) < 0.6, y, rng.integers(0, 5, 3000))
    p[p == 4] = 3  # class 4 never predicted
    y[y == 2] = 1  # class 2 never in the reference
    m = averaged_metrics(confusion_matrix(y, p, labels=range(5)))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = precision_recall_fscore_support(y, p, average=avg, zero_division=0)
        assert (m[f"{avg}_precision"], m[f"{avg}_recall"], m[f"{avg}_f1"]) == pytest.approx((pr, rc, f1))
    assert m["confusion_matrix_normalized"][2] == [0.0] * 5
    assert sum(m["confusion_matrix_normalized"][0]) == pytest.approx(1.0)


def test_hand_computed_averages() -> None:
    cm = np.array([[8, 2], [1, 9]])  # recall 0.8, 0.9; precision 8/9, 9/11
    m = averaged_metrics(cm)
    assert m["balanced_accuracy"] == pytest.approx(0.85)
    assert m["macro_precision"] == pytest.approx((8 / 9 + 9 / 11) / 2)


def test_curves_and_calibration_match_scikit_learn() -> None:
    rng = np.random.default_rng(2)
    k, n = 3, 6000
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    acc = CurveAccumulator(k, bins=2000, calibration_bins=10)
    # fed as two (N, K, H, W) batches, with ignored pixels
    y_img = y.copy()
    y_img[:7] = 255
    half = n // 2
    for s in (slice(0, half), slice(half, n)):
        acc.update(proba[s].T.reshape(1, k, 1, -1), y_img[s].reshape(1, 1, -1))
    keep = np.arange(n) >= 7
    roc, pr = acc.roc(), acc.pr()
    for c in range(k):
        assert roc[c].area == pytest.approx(roc_auc_score(y[keep] == c, proba[keep, c]), abs=2e-3)
        assert pr[c].area == pytest.approx(average_precision_score(y[keep] == c, proba[keep, c]), abs=5e-3)
    conf, hit = proba[keep].max(1), proba[keep].argmax(1) == y[keep]
    frac, mean_conf = calibration_curve(hit, conf, n_bins=10, strategy="uniform")
    cal = acc.calibration()
    ok = cal.count > 0
    assert cal.accuracy[ok] == pytest.approx(frac) and cal.confidence[ok] == pytest.approx(mean_conf)
    b = np.minimum((conf * 10).astype(int), 9)
    ece = sum(
        abs(hit[b == i].mean() - conf[b == i].mean()) * (b == i).sum() for i in range(10) if (b == i).any()
    ) / len(b)
    assert cal.ece == pytest.approx(ece)
    names = ["a", "b", "c"]
    doc = acc.to_json(names)
    assert set(doc["roc_auc"]) == set(names) and len(doc["roc"]["a"]["x"]) <= 101
    for png in (plot_roc(roc, names), plot_pr(pr, names), plot_reliability(cal)):
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_lines_and_missing_columns_are_refused(tmp_path: Path) -> None:
    from shapely.geometry import LineString

    m = write_tif(tmp_path / "map.tif", _classes())
    x0, y0 = TRANSFORM * (1, 1)
    x1, y1 = TRANSFORM * (30, 30)
    gpd.GeoDataFrame({"c": [1]}, geometry=[LineString([(x0, y0), (x1, y1)])], crs=CRS).to_file(
        tmp_path / "l.gpkg"
    )
    with pytest.raises(InputError, match="give polygons or points"):
        compare_map(m, tmp_path / "l.gpkg", column="c")
    with pytest.raises(InputError, match="need --column"):
        compare_map(m, tmp_path / "l.gpkg")
    multi = write_tif(tmp_path / "multi.tif", np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(InputError, match="one band of integer class ids"):
        compare_map(multi, m)


def test_curves_on_chips_of_a_model(tmp_path: Path) -> None:
    from helpers import identity_package

    from eoforge.evaluate.curves import curves_on_chips
    from eoforge.package import load_package

    predictor = load_package(identity_package(tmp_path / "m", bands=2))
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (5, 16, 16))
    images = np.stack([labels + rng.normal(0, 0.2, labels.shape), rng.normal(size=labels.shape)], 1).astype(
        np.float32
    )
    images[0, :, :4, :4] = np.nan
    acc = curves_on_chips(predictor, images, labels, batch_size=2)
    assert acc.pos.sum() == 5 * 256 - 16  # nodata pixels ignored
    assert all(c.area > 0.95 for c in acc.roc())
    assert acc.calibration().ece < 0.5
