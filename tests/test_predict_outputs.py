"""Outputs of `predict` (probabilities, uncertainty, polygons), resume after a failure, backends, CLI checks, Dask."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import dask
import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
from conftest import CRS, TRANSFORM, write_tif
from helpers import RollBand0, identity_package

from eoforge.cli import main
from eoforge.config import ComputeConfig
from eoforge.errors import InputError, PackageError
from eoforge.predict import PredictOptions, predict
from eoforge.predict.backends import agreement, load_predictor


def _image(
    tmp_path: Path, h: int = 150, w: int = 97, seed: int = 1, cell: int = 1
) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = np.kron(rng.integers(0, 3, (-(-h // cell), -(-w // cell))), np.ones((cell, cell), int))[:h, :w]
    idx[40:90, 10:80] = 1  # one large region crossing row-band and block edges
    band0 = idx.astype(np.float32)
    band1 = np.ones((h, w), np.float32)
    band0[5:9, 7:20] = band1[5:9, 7:20] = -9999  # nodata in every band: a nodata pixel (rule 'all')
    img = write_tif(tmp_path / "img.tif", np.stack([band0, band1]), nodata=-9999)
    expected = np.array([10, 20, 30], np.uint8)[idx]
    expected[5:9, 7:20] = 255
    return img, expected


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("blend", ["center", "hann"])
def test_probabilities_and_uncertainty_beside_the_map(tmp_path: Path, blend: str) -> None:
    img, expected = _image(tmp_path)
    pkg = identity_package(tmp_path / "model")
    opts = PredictOptions(tile=64, overlap=16, blend=blend, probabilities="uint8", uncertainty="max-prob")
    res = predict(pkg, [img], tmp_path / "map.tif", options=opts)
    assert res.extras == {
        "probabilities": tmp_path / "map.probs.tif",
        "uncertainty": tmp_path / "map.uncertainty.tif",
    }
    np.testing.assert_array_equal(rasterio.open(res.path).read(1), expected)
    valid = expected != 255
    with rasterio.open(res.extras["probabilities"]) as src:
        assert src.count == 3 and src.dtypes[0] == "uint8" and src.crs.to_string() == CRS
        assert src.transform == TRANSFORM and src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        p = src.read().astype(np.float64) / 255
        assert (src.read_masks(1)[~valid] == 0).all() and (src.read_masks(1)[valid] == 255).all()
    # PickBand0: logits -(b0 - k)^2, so the top probability is softmax(0, -1, -4) at classes 0 and 2 and
    # softmax(-1, 0, -1) at class 1
    top = {
        10: 1 / (1 + np.exp(-1) + np.exp(-4)),
        20: 1 / (1 + 2 * np.exp(-1)),
        30: 1 / (1 + np.exp(-1) + np.exp(-4)),
    }
    want = np.vectorize(lambda c: top.get(int(c), np.nan))(expected)
    np.testing.assert_allclose(p[:, valid].max(axis=0), want[valid], atol=0.5 / 255)
    assert (np.array([10, 20, 30])[p.argmax(axis=0)][valid] == expected[valid]).all()
    with rasterio.open(res.extras["uncertainty"]) as src:
        u = src.read(1)
        assert src.dtypes[0] == "float32" and np.isnan(u[~valid]).all()
        np.testing.assert_allclose(u[valid], 1 - want[valid], atol=1e-5)
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("fmt", ["gpkg", "parquet"])
def test_polygons_rasterized_back_equal_the_map(tmp_path: Path, fmt: str) -> None:
    from eoforge.predict.vectorize import vectorize_map

    img, expected = _image(tmp_path, h=300, w=120, cell=3)
    pkg = identity_package(tmp_path / "model")
    res = predict(
        pkg, [img], tmp_path / "map.tif", options=PredictOptions(vectorize=fmt, tile=64, overlap=16)
    )
    poly = res.extras["polygons"]
    assert poly == tmp_path / f"map.{fmt}"
    df = gpd.read_file(poly) if fmt == "gpkg" else gpd.read_parquet(poly)
    assert df.crs.to_string() == CRS and set(df.columns) >= {"class_id", "class_name", "pixels", "geometry"}
    back = rasterio.features.rasterize(
        zip(df.geometry, df.class_id, strict=True), out_shape=expected.shape, transform=TRANSFORM, fill=255
    )
    np.testing.assert_array_equal(back, expected)
    # blocks of 64 rows: the large region is one polygon, merged across block edges
    small = tmp_path / f"small.{fmt}"
    vectorize_map(res.path, small, fmt=fmt, block=64)
    again = gpd.read_file(small) if fmt == "gpkg" else gpd.read_parquet(small)
    assert len(again) == len(df)
    assert (again.pixels >= 50 * 70).sum() == 1
    # the minimum area drops small polygons only
    vectorize_map(res.path, small, fmt=fmt, block=64, min_area=10)
    big = gpd.read_file(small) if fmt == "gpkg" else gpd.read_parquet(small)
    assert (big.pixels >= 10).all() and len(big) == (df.pixels >= 10).sum()


def test_a_failed_run_resumes_and_is_byte_identical(tmp_path: Path) -> None:
    img, _ = _image(tmp_path, h=300, w=80)
    pkg = identity_package(tmp_path / "model")
    opts = PredictOptions(tile=64, overlap=16, blend="hann", probabilities="uint8", uncertainty="entropy")
    predict(pkg, [img], tmp_path / "ref.tif", options=opts)
    calls: list[int] = []

    def fail_after_two_bands(done: int, total: int) -> None:
        calls.append(done)
        if len(calls) == 2:
            raise KeyboardInterrupt  # like Ctrl-C (or a kill) in the middle of the scene

    out = tmp_path / "map.tif"
    with pytest.raises(KeyboardInterrupt):
        predict(pkg, [img], out, options=opts, on_progress=fail_after_two_bands)
    assert not out.exists() and not (tmp_path / "map.probs.tif").exists()
    assert _hidden(tmp_path) == [".map.tif.parts"]
    res = predict(pkg, [img], out, options=opts)
    assert res.resumed_bands >= 2
    for a, b in [
        ("ref.tif", "map.tif"),
        ("ref.probs.tif", "map.probs.tif"),
        ("ref.uncertainty.tif", "map.uncertainty.tif"),
    ]:
        assert (tmp_path / a).read_bytes() == (tmp_path / b).read_bytes()
    assert _hidden(tmp_path) == []
    # other arguments do not reuse the state of an interrupted run
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        predict(pkg, [img], out, options=opts, on_progress=fail_after_two_bands)
    res = predict(pkg, [img], out, options=PredictOptions(tile=64, overlap=16))
    assert res.resumed_bands == 0 and res.extras == {}


def test_a_killed_process_resumes_byte_identical(tmp_path: Path) -> None:
    img, _ = _image(tmp_path, h=300, w=80)
    pkg = identity_package(tmp_path / "model")
    opts = "PredictOptions(tile=64, overlap=16, blend='triangular', probabilities='float32')"
    child = (
        "import os, signal, sys; sys.path.insert(0, sys.argv[1]); import helpers; "
        "from eoforge.predict import PredictOptions, predict; "
        f"kill = lambda done, total: done >= 2 * total // 6 and os.kill(os.getpid(), signal.SIGKILL); "
        f"predict(sys.argv[2], [sys.argv[3]], sys.argv[4], options={opts}, "
        "on_progress=kill if sys.argv[5] == 'kill' else None)"
    )
    run = [sys.executable, "-c", child, str(Path(__file__).parent), str(pkg), str(img)]
    out = tmp_path / "map.tif"
    killed = subprocess.run([*run, str(out), "kill"], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert not out.exists() and _hidden(tmp_path) == [".map.tif.parts"]
    assert len(list((tmp_path / ".map.tif.parts").glob("band_*.npz"))) >= 2
    subprocess.run([*run, str(out), "no"], check=True)
    predict(
        pkg,
        [img],
        tmp_path / "ref.tif",
        options=PredictOptions(tile=64, overlap=16, blend="triangular", probabilities="float32"),
    )
    assert out.read_bytes() == (tmp_path / "ref.tif").read_bytes()
    assert (tmp_path / "map.probs.tif").read_bytes() == (tmp_path / "ref.probs.tif").read_bytes()
    assert _hidden(tmp_path) == []


def test_backends_and_devices(tmp_path: Path) -> None:
    pkg = identity_package(tmp_path / "model")
    fp32 = load_predictor(pkg, backend="torch-fp32")
    assert fp32.precision == "fp32" and not fp32.channels_last
    auto = load_predictor(pkg, backend="auto")
    assert auto.channels_last and agreement(auto, fp32) == 1.0
    onnx = load_predictor(pkg, backend="onnx")  # the package's ONNX export through ONNX Runtime
    assert agreement(onnx, fp32) == 1.0
    from eoforge.package import load_package as _load
    from eoforge.package import save_package

    bare = _load(pkg)
    no_onnx = save_package(tmp_path / "bare", bare.model, bare.meta, {"test": True}, onnx=False)
    with pytest.raises(PackageError, match=r"the package has no ONNX export; run eoforge export"):
        load_predictor(no_onnx, backend="onnx")
    with pytest.raises(InputError, match=r"backend 'tensorrt': unknown; choose one of: auto, torch"):
        load_predictor(pkg, backend="tensorrt")
    with pytest.raises(InputError, match=r"device 'foo': not a torch device"):
        load_predictor(pkg, device="foo")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(InputError, match=r"device 'cuda': no CUDA GPU on this machine; use --device cpu"):
            load_predictor(pkg, device="cuda")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range x>=1"),
        (["--overlap", "-5"], "Invalid value for '--overlap': -5 is not in the range x>=0"),
        (["--tile", "0"], "Invalid value for '--tile': 0 is not a positive multiple of 32"),
        (["--tile", "48"], "Invalid value for '--tile': 48 is not a positive multiple of 32"),
        (["--tile", "64", "--overlap", "64"], "--overlap 64: must be smaller than --tile 64"),
        (["--device", "foo"], "device 'foo': not a torch device"),
        (["--blend", "gauss"], "Invalid value for '--blend'"),
        (["--workers", "2", "--scheduler", "tcp://x:1"], "--workers and --scheduler: give one of them"),
    ],
)
def test_cli_range_checks_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    img, _ = _image(tmp_path, h=40, w=40)
    pkg = identity_package(tmp_path / "model")
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(pkg), str(img), "-o", str(tmp_path / "map.tif"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "map.tif").exists() and _hidden(tmp_path) == []


def test_cli_writes_every_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    img, expected = _image(tmp_path, h=80, w=70)
    pkg = identity_package(tmp_path / "model")
    out = tmp_path / "map.tif"
    main(["-q", "predict", str(pkg), str(img), "-o", str(out), "--blend", "triangular", "--probabilities",
          "--uncertainty", "--vectorize", "parquet", "--tta", "d4", "--backend", "torch-fp32"])  # fmt: skip
    np.testing.assert_array_equal(rasterio.open(out).read(1), expected)
    for name in ("map.probs.tif", "map.uncertainty.tif", "map.parquet"):
        assert (tmp_path / name).is_file()
    assert rasterio.open(tmp_path / "map.probs.tif").dtypes[0] == "uint8"


def test_dask_local_cluster_equals_single_process(tmp_path: Path) -> None:
    img, _ = _image(tmp_path, h=260, w=70)
    pkg = identity_package(tmp_path / "model")
    opts = PredictOptions(tile=64, overlap=32, blend="hann", probabilities="float32")
    one = predict(pkg, [img], tmp_path / "one.tif", options=opts, backend="torch-fp32")
    # the workers register the test model as the test process does. distributed is imported first: its
    # defaults join dask.config on import, and a set() made before that removes them all when it exits
    # (a later Client in the same process then fails with KeyError 'distributed')
    import distributed  # noqa: F401

    with dask.config.set({"distributed.worker.preload": [str(Path(__file__).with_name("helpers.py"))]}):
        two = predict(
            pkg,
            [img],
            tmp_path / "two.tif",
            options=opts,
            backend="torch-fp32",
            compute=ComputeConfig(workers=2),
        )
    assert two.windows == one.windows
    assert one.path.read_bytes() == two.path.read_bytes()
    assert (tmp_path / "one.probs.tif").read_bytes() == (tmp_path / "two.probs.tif").read_bytes()


@pytest.mark.parametrize(
    ("predict_section", "key"),
    [
        ({"tile": 48}, "predict.tile"),
        ({"tile": 0}, "predict.tile"),
        ({"tile": 64, "overlap": 64}, "must be smaller than predict.tile 64"),
        ({"overlap": -1}, "predict.overlap"),
        ({"batch_size": 0}, "predict.batch_size"),
        ({"device": "foo"}, "predict.device"),
        ({"blend": "gauss"}, "predict.blend"),
        ({"tta": "d8"}, "predict.tta"),
        ({"backend": "tensorrt"}, "predict.backend"),
        ({"probabilities": "float16"}, "predict.probabilities"),
        ({"min_area": -3}, "predict.min_area"),
    ],
)
def test_predict_config_is_range_checked_at_load(predict_section: dict[str, object], key: str) -> None:
    from eoforge.config import parse_config

    raw = {"inputs": {"images": ["a.tif"], "labels": {"path": "l.tif"}, "classes": {1: "a", 2: "b"}}}
    with pytest.raises(InputError, match=key):
        parse_config(raw | {"predict": predict_section})
    cfg = parse_config(raw | {"predict": {"blend": "hann", "probabilities": "uint8", "vectorize": "parquet"}})
    assert cfg.predict.options().blend == "hann" and cfg.predict.options().vectorize == "parquet"


def test_auto_probe_takes_four_spread_windows_and_leaves_out_nodata_ones() -> None:
    from affine import Affine
    from rasterio.windows import Window

    from eoforge.geo import Grid
    from eoforge.predict.engine import _probe

    class Scene:  # the Source interface over an array
        def __init__(self, a: np.ndarray) -> None:
            self.a, self.count = a, a.shape[0]
            self.grid = Grid("EPSG:32633", Affine(10, 0, 0, 0, -10, 0), a.shape[1], a.shape[2])

        def read(self, window: Window | None = None) -> np.ndarray:
            assert window is not None
            r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
            return self.a[:, r : r + h, c : c + w].copy()

        def close(self) -> None:
            pass

    a = np.arange(2 * 300 * 400, dtype=np.float32).reshape(2, 300, 400)
    probe = _probe(Scene(a), tile=128)
    assert probe is not None and probe.shape == (4, 2, 64, 64)  # 4 x (tile/2)²: one tile's pixels
    # centred on the centres of the scene's quarters: rows 75 and 225, columns 100 and 300
    starts = [(75 - 32, 100 - 32), (75 - 32, 300 - 32), (225 - 32, 100 - 32), (225 - 32, 300 - 32)]
    for got, (r, c) in zip(probe, starts, strict=True):
        np.testing.assert_array_equal(got, a[:, r : r + 64, c : c + 64])
    a[:, :150] = np.nan  # the top half is nodata: its two windows are left out
    probe = _probe(Scene(a), tile=128)
    assert probe is not None and probe.shape[0] == 2 and not np.isnan(probe).any()
    assert _probe(Scene(np.full((1, 300, 400), np.nan, np.float32)), tile=128) is None
    small = _probe(Scene(np.ones((1, 40, 70), np.float32)), tile=256)  # sides cut to multiples of 32
    assert small is not None and small.shape == (4, 1, 32, 64)
    tiny = _probe(Scene(np.ones((1, 32, 32), np.float32)), tile=256)  # the four windows coincide: taken once
    assert tiny is not None and tiny.shape == (1, 1, 32, 32)
    assert _probe(Scene(np.ones((1, 20, 400), np.float32)), tile=256) is None  # under 32 px high


def test_auto_falls_back_to_fp32_channels_last_when_reduced_precision_disagrees(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import eoforge.predict.backends as backends

    pkg = identity_package(tmp_path / "model")
    monkeypatch.setattr(backends, "fast_precision", lambda dev: "bf16")  # as on a CPU with bf16
    monkeypatch.setattr(backends, "AGREEMENT", 1.01)  # no agreement is enough: auto must refuse
    probe = np.random.default_rng(0).uniform(0, 3, (2, 2, 32, 32)).astype(np.float32)
    auto = load_predictor(pkg, backend="auto", probe=probe)
    assert (auto.precision, auto.channels_last, auto.backend) == ("fp32", True, "torch-fp32")
    assert "agrees with fp32 on 100.00 % of probed pixels (< 101.0 %); using fp32" in caplog.text
    fp32 = load_predictor(pkg, backend="torch-fp32")
    np.testing.assert_array_equal(auto.predict_index(probe), fp32.predict_index(probe))


def test_predict_uses_the_packages_tta_and_blend_unless_told(tmp_path: Path) -> None:
    """The package records how its evaluated map was predicted (the demo: d4), so `eoforge predict MODEL`
    makes that map by default; an explicit option still wins. Older packages (no record): none / center."""
    from eoforge.package import ClassInfo, PackageMeta, read_meta, save_package

    img, _ = _image(tmp_path, cell=3)
    meta = PackageMeta(
        arch="test-roll-band0", encoder="none", bands=["b0", "b1"], mean=[0.0, 0.0], std=[1.0, 1.0], nodata=None,
        chip_size=32, classes=[ClassInfo(c, f"c{c}", "#112233") for c in (10, 20, 30)], tile=64, overlap=16,
        tta="d4", blend="hann",
    )  # fmt: skip
    pkg = save_package(tmp_path / "model", RollBand0(2, 3), meta, {"test": True})
    assert (read_meta(pkg).tta, read_meta(pkg).blend) == ("d4", "hann")

    def run(name: str, **kw: str) -> np.ndarray:
        res = predict(pkg, [img], tmp_path / name, backend="torch-fp32", options=PredictOptions(**kw))
        return rasterio.open(res.path).read(1)

    default, told = run("default.tif"), run("told.tif", tta="d4", blend="hann")
    plain = run("plain.tif", tta="none", blend="center")
    np.testing.assert_array_equal(default, told)
    assert (default != plain).mean() > 0.05
    main(["-q", "predict", str(pkg), str(img), "-o", str(tmp_path / "cli.tif"), "--backend", "torch-fp32"])
    np.testing.assert_array_equal(rasterio.open(tmp_path / "cli.tif").read(1), default)
    # a package written before tta/blend were recorded predicts as before
    legacy = json.loads((pkg / "eoforge.json").read_text())
    legacy["predict"] = {"tile": 64, "overlap": 16}
    (pkg / "eoforge.json").write_text(json.dumps(legacy))
    assert (read_meta(pkg).tta, read_meta(pkg).blend) == ("none", "center")
    np.testing.assert_array_equal(run("legacy.tif"), plain)
