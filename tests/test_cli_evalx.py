"""CLI of the evaluation tools: evaluate --map / MODEL_DIR --image, sample-design, area."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from conftest import write_tif
from helpers import identity_package

from eoforge.cli import main


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_evaluate_map_against_reference_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = np.full((40, 40), 10, np.uint8)
    a[:, 20:] = 20
    m = write_tif(tmp_path / "map.tif", a)
    ref = a.copy()
    ref[:5, :5] = 20  # 25 pixels wrong
    r = write_tif(tmp_path / "ref.tif", ref)
    main(
        [
            "-q",
            "evaluate",
            "--map",
            str(m),
            "--reference",
            str(r),
            "--classes",
            "10=crop,20=forest",
            "-o",
            str(tmp_path / "o"),
        ]
    )
    got = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert got["overall_accuracy"] == pytest.approx(1 - 25 / 1600)
    assert got["per_class"]["crop"]["recall"] == 1.0  # the 25 pixels are mapped crop, reference forest
    assert got["per_class"]["crop"]["precision"] == pytest.approx(775 / 800)
    assert "metrics.json" in capsys.readouterr().out


def test_evaluate_model_on_a_new_scene(tmp_path: Path) -> None:
    pkg = identity_package(tmp_path / "model", bands=2)
    img = np.zeros((2, 64, 64), np.float32)
    img[0, :, 32:] = 1.0  # the identity model maps band 0 = k to class index k
    i = write_tif(tmp_path / "img.tif", img)
    ref = np.full((64, 64), 10, np.uint8)
    ref[:, 32:] = 20
    r = write_tif(tmp_path / "ref.tif", ref)
    main(["-q", "evaluate", str(pkg), "--image", str(i), "--reference", str(r), "-o", str(tmp_path / "o")])
    got = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert (tmp_path / "o" / "map.tif").is_file()
    assert got["overall_accuracy"] == 1.0 and got["pixels"] == 64 * 64
    assert [c["name"] for c in got["classes"]] == ["class10", "class20", "class30"]  # names from the package
    curves = got["curves"]
    assert curves["roc_auc"] == {"class10": 1.0, "class20": 1.0, "class30": None}  # class30 is never true
    assert sum(curves["reliability"]["count"]) == 64 * 64
    assert 0 < curves["expected_calibration_error"] < 1  # right but unsure: softmax of -(x - k)^2
    assert (tmp_path / "o" / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_usage_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    m = write_tif(tmp_path / "map.tif", np.ones((8, 8), np.uint8))
    assert "--reference is required" in _fails(
        ["evaluate", "--map", str(m), "-o", str(tmp_path / "o")], capsys
    )
    assert "give a CONFIG" in _fails(["evaluate", "-o", str(tmp_path / "o")], capsys)
    err = _fails(
        ["evaluate", "--map", str(m), "--reference", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o")],
        capsys,
    )
    assert "nope.tif: reference file not found" in err
    assert not (tmp_path / "o").exists()


def test_sample_design_then_area_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = np.full((50, 50), 1, np.uint8)
    a[:5, :5] = 2
    m = write_tif(tmp_path / "map.tif", a)
    main(
        ["sample-design", str(m), "--total", "40", "--min-per-class", "10", "-o", str(tmp_path / "pts.gpkg")]
    )
    pts = gpd.read_file(tmp_path / "pts.gpkg")
    assert pts["map_class"].value_counts().to_dict() == {1: 30, 2: 10}
    pts["reference"] = pts["map_class"].astype(str)
    pts.loc[pts.index[pts["map_class"] == 1][:3], "reference"] = "2"  # 3 of 30 crop points are water
    pts.to_file(tmp_path / "lab.gpkg")
    capsys.readouterr()
    main(
        [
            "area",
            str(m),
            "--reference",
            str(tmp_path / "lab.gpkg"),
            "--column",
            "reference",
            "-o",
            str(tmp_path / "a"),
        ]
    )
    out = capsys.readouterr().out
    assert "area estimate" in out and "overall accuracy" in out
    got = json.loads((tmp_path / "a" / "area.json").read_text())
    water = got["classes"]["2"]
    # 10 % of the 2475 class-1 pixels are water: 25 + 247.5 px of 0.01 ha
    assert water["area_ha"] == pytest.approx((25 + 0.1 * 2475) * 0.01)
    assert water["users_accuracy"] == 1.0 and got["classes"]["1"]["users_accuracy"] == pytest.approx(0.9)
    for key in (
        "map_pixels",
        "area_ci95_ha",
        "users_accuracy_se",
        "producers_accuracy",
        "producers_accuracy_se",
    ):
        assert key in water
    assert "overall_accuracy_se" in got
    err = _fails(
        [
            "area",
            str(m),
            "--reference",
            str(tmp_path / "lab.gpkg"),
            "--column",
            "nope",
            "-o",
            str(tmp_path / "b"),
        ],
        capsys,
    )
    assert "no column 'nope'" in err
    assert "--min-per-class" in _fails(
        ["sample-design", str(m), "--total", "5", "--min-per-class", "10", "-o", str(tmp_path / "x.gpkg")],
        capsys,
    )


def test_model_curves_on_reference_points_run_only_their_windows(tmp_path: Path) -> None:
    from conftest import CRS, TRANSFORM

    from eoforge.evaluate.compare import model_curves
    from eoforge.package import load_package

    predictor = load_package(identity_package(tmp_path / "model", bands=2, tile=32, overlap=8))
    img = np.zeros((2, 96, 96), np.float32)
    img[0, :, 48:] = 1.0
    i = write_tif(tmp_path / "img.tif", img)
    xs, ys = TRANSFORM * (np.array([5.5, 60.5, 60.5, 90.5]), np.array([5.5, 5.5, 5.5, 90.5]))
    pts = gpd.GeoDataFrame(
        {"c": ["class10", "class20", "class20", "30"]}, geometry=gpd.points_from_xy(xs, ys), crs=CRS
    )
    pts.to_file(tmp_path / "pts.gpkg")
    from eoforge.evaluate.reference import ClassTable

    table = ClassTable([10, 20, 30], ["class10", "class20", "class30"])
    acc = model_curves(predictor, [i], tmp_path / "pts.gpkg", "c", table)
    assert acc.pos.sum(axis=1).tolist() == [1, 2, 1]  # each point once, duplicates included
    assert acc.calibration().count.sum() == 4
    assert acc.roc()[0].area == 1.0
