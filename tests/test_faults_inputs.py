"""Fault injection on the inputs (issue 12, causes 5 and 1): inputs that would give a silently wrong result are
refused in one line or repaired and counted at prepare time; a run that would not fit on its disk is refused
before anything is written.

Every error path asserts exit code 2, exactly one line on stderr, no traceback and no new file under a final
name (the helpers of ``test_faults``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import yaml
from conftest import CRS, TRANSFORM, pixel_box, write_tif
from helpers import identity_package
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio import features
from shapely import make_valid
from shapely.geometry import LineString, Point, Polygon
from test_faults import _config, _fails, _files, _temporaries

from eoforge.chips.samplers import grid_windows
from eoforge.cli import main
from eoforge.config import ChipsConfig, PredictConfig
from eoforge.evaluate.warnings import conclusion_warnings
from eoforge.io.space import chip_places, stage_bytes


def _cfg(scene: dict, labels: dict | None = None, chips: dict | None = None, **inputs: Any) -> Path:
    """The fault suite's run config with ``inputs.labels`` / ``inputs`` keys / ``chips`` keys replaced."""
    path = _config(scene)
    raw = yaml.safe_load(path.read_text())
    if labels is not None:
        raw["inputs"]["labels"] = labels
    raw["inputs"].update(inputs)
    raw["chips"].update(chips or {})
    path.write_text(yaml.safe_dump(raw))
    return path


def _refused(scene: dict, cfg: Path, capsys: pytest.CaptureFixture[str], cmd: str = "prepare") -> str:
    """Run ``cmd`` expecting a one-line refusal; nothing may appear in the run folder but its lock."""
    out = scene["dir"] / "out"
    err = _fails([cmd, str(cfg), "-o", str(out)], capsys)
    assert {p.name for p in _files(out)} <= {".eoforge.lock"}, _files(out)
    return err


def _prepared(scene: dict, cfg: Path) -> dict:
    out = scene["dir"] / "out"
    main(["-q", "prepare", str(cfg), "-o", str(out)])
    assert _temporaries(out) == []
    return dict(json.loads((out / "prepared" / "scene.json").read_text()))


def _logged(capsys: pytest.CaptureFixture[str]) -> str:
    """What the CLI logged on stderr, with rich's line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def _labels(scene: dict) -> np.ndarray:
    with rasterio.open(scene["dir"] / "out" / "prepared" / "labels.tif") as src:
        return np.asarray(src.read(1))


# ---------------------------------------------------------------- rasters


def test_complex_rasters_are_refused(scene: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Read as float32 a complex band would lose its imaginary part: refused in prepare and predict."""
    slc = (np.ones((64, 64)) * (3 + 4j)).astype(np.complex64)
    write_tif(tmp_path / "slc.tif", slc)
    cfg = _cfg(scene, images=[str(scene["images"][0]), str(tmp_path / "slc.tif")])
    err = _refused(scene, cfg, capsys)
    assert f"{tmp_path / 'slc.tif'}: holds complex values (complex64)" in err and "amplitude" in err
    package = identity_package(tmp_path / "model", bands=1, class_ids=(1, 2, 3))
    err = _fails(
        ["predict", str(package), str(tmp_path / "slc.tif"), "-o", str(tmp_path / "map.tif")], capsys
    )
    assert "slc.tif: holds complex values (complex64)" in err
    assert not (tmp_path / "map.tif").exists()


@pytest.mark.parametrize("grid", [{}, {"resolution": 20.0}, {"crs": "EPSG:32632"}])
def test_a_later_band_without_crs_says_so(
    scene: dict, grid: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not "grid differs": the file has no CRS, whatever the grid rule (native, resolution, CRS given)."""
    band = scene["images"][2]
    with rasterio.open(band) as src:
        data = src.read(1)
    write_tif(band, data, nodata=0, crs=None)  # type: ignore[arg-type]
    cfg = _cfg(scene)
    if grid:
        raw = yaml.safe_load(cfg.read_text())
        raw["prepare"] = {"grid": grid}
        cfg.write_text(yaml.safe_dump(raw))
    err = _refused(scene, cfg, capsys)
    assert f"{band}: raster has no CRS; assign one" in err and "grid" not in err.lower()


def test_predict_image_without_crs_says_so(
    scene: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = identity_package(tmp_path / "model", bands=2, class_ids=(1, 2, 3))
    write_tif(tmp_path / "b2.tif", np.ones((64, 64), np.float32), crs=None)  # type: ignore[arg-type]
    argv = [str(package), str(scene["images"][0]), str(tmp_path / "b2.tif"), "-o", str(tmp_path / "map.tif")]
    err = _fails(["predict", *argv], capsys)
    assert "b2.tif: raster has no CRS" in err and not (tmp_path / "map.tif").exists()


# ---------------------------------------------------------------- layers


def test_several_layers_need_inputs_labels_layer(
    scene: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gpkg = tmp_path / "two.gpkg"
    gpd.read_file(scene["labels"]).to_file(gpkg, layer="truth")
    draft = gpd.GeoDataFrame({"cover": ["forest"]}, geometry=[pixel_box(0, 0, 64, 64)], crs=CRS)
    draft.to_file(gpkg, layer="draft")
    labels = {"path": str(gpkg), "column": "cover"}
    err = _refused(scene, _cfg(scene, labels=labels), capsys)
    assert f"{gpkg}: holds 2 layers (truth, draft); set inputs.labels.layer" in err
    err = _refused(scene, _cfg(scene, labels={**labels, "layer": "final"}), capsys)
    assert f"{gpkg}: no layer 'final' (layers: truth, draft); set inputs.labels.layer to one of them" in err
    facts = _prepared(scene, _cfg(scene, labels={**labels, "layer": "draft"}))
    assert facts["label_facts"]["layer"] == "draft"
    assert set(np.unique(_labels(scene))) == {1, 255}  # all forest (index 1), nodata corner unlabelled
    _prepared(scene, _cfg(scene, labels={**labels, "layer": "truth"}))
    assert set(np.unique(_labels(scene))) == {0, 1, 2, 255}


def test_labels_crs_is_for_files_without_one(scene: dict, capsys: pytest.CaptureFixture[str]) -> None:
    labels = {"path": str(scene["labels"]), "column": "cover"}
    err = _refused(scene, _cfg(scene, labels={**labels, "crs": "EPSG:4326"}), capsys)
    assert f"{scene['labels']}: the file's CRS (EPSG:32633) differs from inputs.labels.crs (EPSG:4326)" in err
    _prepared(scene, _cfg(scene, labels={**labels, "crs": "epsg:32633"}))  # the same CRS, spelled otherwise
    assert set(np.unique(_labels(scene))) == {0, 1, 2, 255}


def test_a_table_beside_one_layer_needs_no_layer_key(scene: dict, tmp_path: Path) -> None:
    """A non-spatial table (e.g. QGIS layer styles) is not a second layer of labels."""
    gpkg = tmp_path / "styled.gpkg"
    gpd.read_file(scene["labels"]).to_file(gpkg, layer="labels")
    pyogrio.write_dataframe(pd.DataFrame({"style": ["x"]}), gpkg, layer="layer_styles")
    _prepared(scene, _cfg(scene, labels={"path": str(gpkg), "column": "cover"}))
    assert set(np.unique(_labels(scene))) == {0, 1, 2, 255}


def test_geoparquet_labels(scene: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gpd.read_file(scene["labels"]).to_parquet(tmp_path / "labels.parquet")
    _prepared(scene, _cfg(scene, labels={"path": str(tmp_path / "labels.parquet"), "column": "cover"}))
    assert set(np.unique(_labels(scene))) == {0, 1, 2, 255}
    shutil.rmtree(scene["dir"] / "out")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really")
    err = _refused(
        scene, _cfg(scene, labels={"path": str(tmp_path / "bad.parquet"), "column": "cover"}), capsys
    )
    assert f"{tmp_path / 'bad.parquet'}: not a readable vector file (" in err


# ---------------------------------------------------------------- CSV labels


def test_csv_labels_without_geometry_or_crs(
    scene: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "labels.csv"
    csv.write_text("id,cover\n1,water\n2,forest\n")
    err = _refused(scene, _cfg(scene, labels={"path": str(csv), "column": "cover"}), capsys)
    assert f"{csv}: a CSV without geometry (no 'x'/'y' columns and no WKT column; columns: id, cover)" in err
    csv.write_text("x,y,cover\n500100,4999900,water\n")
    err = _refused(scene, _cfg(scene, labels={"path": str(csv), "column": "cover"}), capsys)
    assert f"{csv}: a CSV needs its CRS (CSV files carry none); set inputs.labels.crs" in err
    csv.write_text('wkt,cover\n"POLYGON ((0 0, 1 1, 2",water\n')
    err = _refused(scene, _cfg(scene, labels={"path": str(csv), "column": "cover", "crs": CRS}), capsys)
    assert f"{csv}: column 'wkt' is not WKT geometry" in err


def test_csv_labels_with_wkt_polygons(scene: dict, tmp_path: Path) -> None:
    gdf = gpd.read_file(scene["labels"])
    csv = tmp_path / "labels.csv"
    pd.DataFrame({"WKT": gdf.geometry.to_wkt(), "cover": gdf["cover"]}).to_csv(csv, index=False)
    _prepared(scene, _cfg(scene, labels={"path": str(csv), "column": "cover", "crs": CRS}))
    from_csv = _labels(scene)
    _prepared(scene, _cfg(scene))
    assert np.array_equal(from_csv, _labels(scene))


# ---------------------------------------------------------------- points and lines as labels


@pytest.mark.parametrize("kind", ["points", "lines", "mixed"])
def test_points_or_lines_need_sparse_chips(
    scene: dict, tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = TRANSFORM * (20.5, 30.5)
    geoms = {
        "points": [Point(x, y), Point(x + 300, y)],
        "lines": [LineString([(x, y), (x + 100, y)]), LineString([(x + 300, y), (x + 300, y - 50)])],
        "mixed": [Point(x, y), pixel_box(0, 32, 64, 64)],
    }[kind]
    path = tmp_path / f"{kind}.gpkg"
    gpd.GeoDataFrame({"cover": ["water", "forest"]}, geometry=geoms, crs=CRS).to_file(path)
    labels = {"path": str(path), "column": "cover"}
    err = _refused(scene, _cfg(scene, labels=labels), capsys)
    n = 1 if kind == "mixed" else 2
    assert f"{path}: {n} of 2 label geometries are points or lines (" in err
    assert "buffer them into polygons" in err and "chips.min_labelled: 0" in err


def test_point_labels_are_sparse_with_min_labelled_zero(scene: dict, tmp_path: Path) -> None:
    """The explicit rule: with ``chips.min_labelled: 0`` points label the pixel they fall in, and chips keep
    any labelled pixel. CSV points (x, y, CRS) read the same way as ``eoforge.points``."""
    rows_cols = [(10, 10), (40, 12), (20, 50), (50, 45), (30, 30)]
    xy = [TRANSFORM * (c + 0.5, r + 0.5) for r, c in rows_cols]
    cover = ["water", "water", "forest", "field", "forest"]
    csv = tmp_path / "points.csv"
    pd.DataFrame({"x": [p[0] for p in xy], "y": [p[1] for p in xy], "cover": cover}).to_csv(csv, index=False)
    labels = {"path": str(csv), "column": "cover", "crs": CRS}
    cfg = _cfg(scene, labels=labels, chips={"min_labelled": 0.0})
    facts = _prepared(scene, cfg)
    lab = _labels(scene)
    assert [int(lab[r, c]) for r, c in rows_cols] == [0, 0, 1, 2, 1]
    assert int((lab != 255).sum()) == 5
    assert facts["label_facts"]["geometries"] == {"Point": 5}
    out = scene["dir"] / "out"
    main(["-q", "chips", str(cfg), "-o", str(out)])
    chips = json.loads((out / "chips" / "chips.json").read_text())
    assert sum(chips["counts"].values()) > 0
    assert chips["min_labelled"] == 0.0


# ---------------------------------------------------------------- invalid polygons, null classes, empty classes


def test_invalid_polygons_are_repaired_and_counted(
    scene: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (x0, y0), (x1, y1) = TRANSFORM * (36, 4), TRANSFORM * (60, 28)
    bowtie = Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])  # self-intersecting outline
    assert not bowtie.is_valid
    gdf = gpd.GeoDataFrame({"cover": ["water", "field"]}, geometry=[pixel_box(0, 0, 64, 32), bowtie], crs=CRS)
    gdf.to_file(tmp_path / "bowtie.gpkg")
    capsys.readouterr()
    facts = _prepared(scene, _cfg(scene, labels={"path": str(tmp_path / "bowtie.gpkg"), "column": "cover"}))
    assert facts["label_facts"]["repaired"] == 1
    assert (
        "1 invalid polygon(s) (e.g. self-intersecting outlines) repaired with shapely.make_valid"
        in _logged(capsys)
    )
    burnt = features.rasterize([(make_valid(bowtie), 1)], out_shape=(64, 64), transform=TRANSFORM)
    lab = _labels(scene)
    assert np.array_equal(lab[:, 32:] == 2, burnt[:, 32:] == 1)  # both triangles of the bow-tie, only them
    assert int((lab == 2).sum()) > 200


def test_rows_without_class_are_dropped_and_counted(
    scene: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gdf = gpd.read_file(scene["labels"])
    gdf.loc[2, "cover"] = None  # the field square: its pixels stay forest
    path = tmp_path / "nulls.gpkg"
    gdf.to_file(path)
    capsys.readouterr()
    facts = _prepared(scene, _cfg(scene, labels={"path": str(path), "column": "cover"}))
    assert facts["label_facts"]["null_class"] == 1 and facts["label_facts"]["rows"] == 3
    assert "1 of 3 rows have no class in column 'cover' and are dropped" in _logged(capsys)
    assert 2 not in np.unique(_labels(scene))
    shutil.rmtree(scene["dir"] / "out")
    gdf["cover"] = [None, None, None]
    gdf.to_file(path)
    err = _refused(scene, _cfg(scene, labels={"path": str(path), "column": "cover"}), capsys)
    assert f"{path}: every row has an empty class in column 'cover'; fill the column" in err


def test_classes_without_labelled_pixels_are_reported(
    scene: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    classes = {**scene["classes"], 4: "urban"}
    capsys.readouterr()
    facts = _prepared(scene, _cfg(scene, classes=classes))
    assert facts["label_facts"]["classes_without_pixels"] == ["urban"]
    assert "class(es) 'urban': no labelled pixel on valid image pixels after rasterization" in _logged(capsys)
    metrics = {
        "model": {"arch": "unet"},
        "kappa": 0.9,
        "overall_accuracy": 0.95,
        "class_pixels": {s: {"water": 500, "forest": 600, "field": 300, "urban": 0} for s in ("val", "test")},
        "baselines": [],
        "per_class": {},
        "pixels": 10**5,
        "test_blocks": 10,
    }
    counts = {c["name"]: c["pixels"] for c in facts["classes"]}
    codes = [c for c, _ in conclusion_warnings(metrics, counts, None, [])]
    assert "class_no_labels" in codes
    message = dict(conclusion_warnings(metrics, counts, None, []))["class_no_labels"]
    assert message.startswith("'urban' listed in inputs.classes but no labelled pixel")


# ---------------------------------------------------------------- free space


def _free(monkeypatch: pytest.MonkeyPatch, free: int) -> None:
    usage = shutil._ntuple_diskusage(10**12, 10**12 - free, free)  # type: ignore[attr-defined]
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage)


def test_run_without_the_space_it_needs_is_refused_before_writing(
    scene: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(scene)
    out = scene["dir"] / "out"
    _free(monkeypatch, 10 * 2**10)
    err = _refused(scene, cfg, capsys, cmd="run")
    assert err.startswith(f"error: {out}: not enough free space: the run needs about ")
    assert "prepared stack" in err and "chips" in err and "map" in err and "10 KiB are free" in err
    assert "free some space or choose an output folder on another disk" in err
    err = _refused(scene, cfg, capsys, cmd="prepare")
    assert "prepared stack" in err and "chips" not in err


def test_a_stage_checks_its_own_outputs_against_the_space_left(
    scene: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After prepare, chips needs room for its chips: 64x64 px, 3 bands, 32 px chips every 16 px."""
    cfg = _cfg(scene)
    out = scene["dir"] / "out"
    need = stage_bytes(["prepare"], 64, 64, 3, [1, 2, 3], ChipsConfig(), PredictConfig())["prepare"]
    assert need == 64 * 64 * (3 * 4 + 1)
    _free(monkeypatch, need)  # exactly enough for the prepared stack
    main(["-q", "prepare", str(cfg), "-o", str(out)])
    before = _files(out)
    chips = ChipsConfig(size=32, stride=16)
    assert stage_bytes(["chips"], 64, 64, 3, [1], chips, PredictConfig())["chips"] == 9 * 32 * 32 * 13
    err = _fails(["chips", str(cfg), "-o", str(out)], capsys)
    assert f"{out}: not enough free space: the run needs about 117 KiB (chips 117 KiB;" in err
    assert _files(out) == before
    monkeypatch.undo()
    main(["-q", "chips", str(cfg), "-o", str(out)])
    assert (out / "chips" / "chips.json").is_file()


@settings(max_examples=60, deadline=None)
@given(
    h=st.integers(1, 300),
    w=st.integers(1, 300),
    size=st.sampled_from([32, 64, 96]),
    stride=st.one_of(st.none(), st.integers(1, 100)),
)
def test_chip_places_bound_the_grid_sampler(h: int, w: int, size: int, stride: int | None) -> None:
    """The space estimate counts exactly the grid sampler's places (the most chips it can keep)."""
    cfg = ChipsConfig(size=size, stride=stride, split={"test": 0.2})
    rows, _ = grid_windows(h, w, size, stride or size)
    assert chip_places(h, w, cfg) == len(rows)
    balanced = ChipsConfig(size=size, stride=stride, sampler="balanced", split={"test": 0.2})
    assert chip_places(h, w, balanced) == 2 * len(rows)


def test_a_run_with_dropped_rows_repaired_polygons_and_an_empty_class(scene: dict, tmp_path: Path) -> None:
    """End to end: the run finishes, the report states what prepare dropped and repaired, and warns about the
    class that has no labelled pixel."""
    gdf = gpd.read_file(scene["labels"])
    (x0, y0), (x1, y1) = TRANSFORM * (36, 4), TRANSFORM * (60, 28)
    gdf.loc[2, "geometry"] = Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])  # the field: a bow-tie
    extra = gpd.GeoDataFrame({"cover": [None]}, geometry=[pixel_box(40, 0, 50, 10)], crs=CRS)
    pd.concat([gdf, extra]).to_file(tmp_path / "messy.gpkg")
    labels = {"path": str(tmp_path / "messy.gpkg"), "column": "cover"}
    cfg = _cfg(scene, labels=labels, classes={**scene["classes"], 4: "urban"})
    out = scene["dir"] / "out"
    main(["-q", "run", str(cfg), "-o", str(out)])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["label_facts"]["null_class"] == 1 and metrics["label_facts"]["repaired"] == 1
    assert "class_no_labels" in [w["code"] for w in metrics["warnings"]]
    html = " ".join((out / "report.html").read_text().split())
    assert (
        "Labels (4 features read): 1 without a class and 0 without geometry were dropped; 1 invalid" in html
    )
    assert "<b>class_no_labels</b>: &#39;urban&#39; listed in inputs.classes" in html
