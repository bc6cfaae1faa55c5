"""The model package: safetensors, zip, ONNX parity and backend, STAC MLM item, old packages, corrupt packages."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tif
from helpers import identity_package

from eoforge.cli import main
from eoforge.errors import PackageError
from eoforge.models import create_model
from eoforge.package import ClassInfo, PackageMeta, load_package, read_meta, save_package
from eoforge.package.archive import package_run, write_zip
from eoforge.package.onnx import OnnxPredictor

BANDS = 3
CLASSES = [
    ClassInfo(10, "water", "#1f78b4"),
    ClassInfo(20, "forest", "#33a02c"),
    ClassInfo(30, "urban", "#e31a1c"),
]


def _meta() -> PackageMeta:
    return PackageMeta(
        arch="unet",
        encoder="resnet18",
        bands=["blue", "green", "red"],
        mean=[100.0, 200.0, 300.0],
        std=[10.0, 20.0, 30.0],
        nodata=None,
        chip_size=32,
        classes=CLASSES,
        tile=64,
        overlap=16,
    )


@pytest.fixture(scope="module")
def unet_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised smp U-Net (resnet18) package with its ONNX export, built once per module."""
    torch.manual_seed(0)
    model = create_model("unet", BANDS, len(CLASSES), "resnet18")
    root = tmp_path_factory.mktemp("pkg")
    return save_package(root / "model", model, _meta(), {"model": {"arch": "unet"}}, {"mean_iou": 0.5})


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(2, BANDS, 64, 96)) * 30 + 200).astype(np.float32)
    x[0, :, :7, :9] = np.nan
    return x


def test_folder_holds_safetensors_onnx_item_and_parity(unet_package: Path) -> None:
    names = {p.name for p in unet_package.iterdir()}
    assert {
        "model.safetensors",
        "model.onnx",
        "item.json",
        "eoforge.json",
        "config.yaml",
        "metrics.json",
    } <= names
    assert "model.pt" not in names
    meta = read_meta(unet_package)
    assert meta.onnx is not None and meta.onnx.file == "model.onnx"
    assert meta.onnx.max_abs_diff < 1e-4  # parity of torch vs ONNX Runtime on random inputs, stored
    assert meta.onnx.parity_inputs == [2, BANDS, 64, 96]


def test_onnx_predictor_matches_torch_with_dynamic_batch_and_size(unet_package: Path) -> None:
    torch_pred = load_package(unet_package)
    onnx_pred = OnnxPredictor.from_package(unet_package)
    assert onnx_pred.class_ids == [10, 20, 30] and onnx_pred.num_classes == 3
    for x in (_inputs(), _inputs()[:1, :, :32, :32]):
        a, b = torch_pred.logits(x), onnx_pred.logits(x)
        assert a.shape == b.shape == (x.shape[0], 3, x.shape[2], x.shape[3])
        assert float((a - b).abs().max()) < 1e-4
        np.testing.assert_allclose(torch_pred.predict_proba(x), onnx_pred.predict_proba(x), atol=1e-5)
    with pytest.raises(PackageError, match="input has 2 bands but the model was trained on 3"):
        onnx_pred.logits(np.zeros((1, 2, 32, 32), np.float32))


def test_fresh_process_predictions_are_identical_from_folder_and_zip(
    unet_package: Path, tmp_path: Path
) -> None:
    x = _inputs()
    np.save(tmp_path / "x.npy", x)
    zpath = write_zip(unet_package, tmp_path / "model.zip")
    expected = load_package(unet_package).logits(x).numpy()
    script = (
        "import sys, numpy as np; from eoforge.package import load_package; "
        "x = np.load(sys.argv[1]); "
        "[np.save(f'{sys.argv[2]}/{i}.npy', load_package(p).logits(x).numpy()) for i, p in enumerate(sys.argv[3:])]"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "x.npy"), str(tmp_path), str(unet_package), str(zpath)],
        check=True,
    )
    for i in range(2):
        got = np.load(tmp_path / f"{i}.npy")
        np.testing.assert_allclose(got, expected, atol=1e-6)
        assert np.array_equal(got.argmax(1), expected.argmax(1))
    assert read_meta(zpath) == read_meta(unet_package)


def test_mlm_item_validates(unet_package: Path) -> None:
    """Core STAC Item JSON schema (bundled with pystac) + the MLM fields parsed by stac-model's models.

    The extension's own schema.json is in no installed package (stac-model and pystac fetch it at run time),
    so the MLM fields are checked with stac-model's pydantic models, the extension's reference implementation.
    """
    import jsonschema
    from pystac.validation.local_validator import get_local_schema_cache
    from referencing import Registry, Resource
    from stac_model.schema import SCHEMA_URI, MLModelProperties

    item = json.loads((unet_package / "item.json").read_text())
    cache = get_local_schema_cache()
    registry = Registry().with_resources([(k, Resource.from_contents(v)) for k, v in cache.items()])
    core = next(v for k, v in cache.items() if k.endswith("v1.1.0/item-spec/json-schema/item.json"))
    jsonschema.Draft7Validator(core, registry=registry).validate(item)
    props = item["properties"]
    parsed = MLModelProperties.model_validate(props)
    assert SCHEMA_URI in item["stac_extensions"]
    assert parsed.input[0].bands == ["blue", "green", "red"]
    assert [s.mean for s in parsed.input[0].value_scaling] == [100.0, 200.0, 300.0]  # type: ignore[union-attr]
    assert props["mlm:input"][0]["input"]["dim_order"] == ["batch", "bands", "height", "width"]
    assert props["mlm:tasks"] == ["semantic-segmentation"]
    classes = props["mlm:output"][0]["classification:classes"]
    assert [(c["value"], c["name"], c["color_hint"]) for c in classes] == [
        (10, "water", "1F78B4"),
        (20, "forest", "33A02C"),
        (30, "urban", "E31A1C"),
    ]
    assets = item["assets"]
    assert assets["weights"]["href"] == "./model.safetensors" and "mlm:model" in assets["weights"]["roles"]
    assert assets["onnx"]["mlm:artifact_type"] == "onnx"
    assert assets["weights"]["file:size"] == (unet_package / "model.safetensors").stat().st_size
    assert props["eoforge:metrics"] == {"mean_iou": 0.5}
    # rules of the MLM schema that stac-model's models do not check: required fields, a model asset, its
    # artifact type, and input bands described on the model assets (STAC 1.1 `bands`)
    assert {"mlm:name", "mlm:architecture", "mlm:tasks", "mlm:input", "mlm:output"} <= set(props)
    models = [a for a in assets.values() if "mlm:model" in a["roles"]]
    assert models and all(a["mlm:artifact_type"] for a in models)
    assert all([b["name"] for b in a["bands"]] == props["mlm:input"][0]["bands"] for a in models)
    assert item["stac_version"].startswith("1.1")


def test_package_command_zips_a_run(
    unet_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    shutil.copytree(unet_package, run / "model")
    main(["package", str(run), "-o", str(tmp_path / "out.zip")])
    assert "out.zip" in capsys.readouterr().out
    with zipfile.ZipFile(tmp_path / "out.zip") as zf:
        assert {"model.safetensors", "model.onnx", "item.json", "eoforge.json"} <= set(zf.namelist())
    assert load_package(tmp_path / "out.zip").num_classes == 3


def test_export_adds_onnx_to_a_package_without_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = identity_package(tmp_path / "model")
    (pkg / "model.onnx").unlink()
    meta = json.loads((pkg / "eoforge.json").read_text())
    del meta["onnx"]
    (pkg / "eoforge.json").write_text(json.dumps(meta))
    main(["export", str(pkg), "--onnx", "-o", str(tmp_path / "copy.onnx")])
    assert "max |onnx - torch|" in capsys.readouterr().out
    assert (tmp_path / "copy.onnx").is_file() and (pkg / "model.onnx").is_file()
    assert read_meta(pkg).onnx is not None
    x = np.arange(2 * 2 * 32 * 32, dtype=np.float32).reshape(2, 2, 32, 32) % 3
    assert np.array_equal(
        OnnxPredictor.from_package(pkg).predict_index(x), load_package(pkg).predict_index(x)
    )


class _NotExportable(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.fft.fft2(x.numpy()).real.astype(np.float32))  # leaves the traced graph


def test_a_model_that_cannot_be_exported_refuses(tmp_path: Path) -> None:
    from eoforge.package.onnx import export_onnx

    with pytest.raises(PackageError, match="cannot be exported to ONNX|differ from torch"):
        export_onnx(_NotExportable(), _meta(), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_package_of_an_earlier_version_still_loads(tmp_path: Path) -> None:
    """``model.pt`` (torch.save) + eoforge.json without the ONNX section: as written by eoforge 0.1."""
    pkg = identity_package(tmp_path / "model")
    x = np.random.default_rng(0).uniform(0, 2, (1, 2, 32, 32)).astype(np.float32)
    expected = load_package(pkg).predict_index(x)
    old = tmp_path / "old"
    old.mkdir()
    meta = json.loads((pkg / "eoforge.json").read_text())
    del meta["onnx"]
    (old / "eoforge.json").write_text(json.dumps(meta))
    torch.save(load_package(pkg).model.state_dict(), old / "model.pt")
    assert np.array_equal(load_package(old).predict_index(x), expected)


# --- issue 12, cause 4: corrupt packages give one line naming the package and the fix, exit code 2 ---


def _corrupt_meta(key: str, value: object) -> object:
    def edit(pkg: Path) -> None:
        meta = json.loads((pkg / "eoforge.json").read_text())
        if key == "classes.color":
            meta["classes"][1]["color"] = value
        elif key == "normalization.mean":
            meta["normalization"]["mean"] = value
        else:
            meta[key] = value
        (pkg / "eoforge.json").write_text(json.dumps(meta))

    return edit


def _random_weights(pkg: Path) -> None:
    (pkg / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(4096))


def _truncated_weights(pkg: Path) -> None:
    data = (pkg / "model.safetensors").read_bytes()
    (pkg / "model.safetensors").write_bytes(data[: len(data) // 2])


def _no_weights(pkg: Path) -> None:
    (pkg / "model.safetensors").unlink()


def _not_json(pkg: Path) -> None:
    (pkg / "eoforge.json").write_text("{ not json")


CORRUPTIONS = {
    "random bytes in the weights": (_random_weights, "model.safetensors is not a readable safetensors file"),
    "truncated weights": (_truncated_weights, "model.safetensors is not a readable safetensors file"),
    "no weights": (_no_weights, "no weights (model.safetensors)"),
    "normalisation of the wrong length": (
        _corrupt_meta("normalization.mean", [0.0]),
        "normalization has 1 means and 2 stds for 2 bands",
    ),
    "bad colour": (_corrupt_meta("classes.color", "red"), "class 'class20' has colour 'red', not #rrggbb"),
    "bad hex colour": (_corrupt_meta("classes.color", "#zzzzzz"), "has colour '#zzzzzz'"),
    "unknown architecture": (_corrupt_meta("arch", "resnet-9000"), "unknown model 'resnet-9000'"),
    "metadata not json": (_not_json, "malformed package metadata eoforge.json"),
}


@pytest.mark.parametrize("how", sorted(CORRUPTIONS))
@pytest.mark.parametrize("as_zip", [False, True])
def test_corrupt_package_is_one_line_exit_2(
    how: str, as_zip: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    corrupt, expected = CORRUPTIONS[how]
    pkg = identity_package(tmp_path / "model", bands=2)
    corrupt(pkg)  # type: ignore[operator]
    target = pkg
    if as_zip:
        target = tmp_path / "model.zip"
        with zipfile.ZipFile(target, "w") as zf:
            for p in pkg.iterdir():
                zf.write(p, arcname=p.name)
    img = write_tif(tmp_path / "img.tif", np.ones((2, 32, 32), np.float32))
    out = tmp_path / "map.tif"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["predict", str(target), str(img), "-o", str(out)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(target) in err and expected in err, err
    assert "eoforge" in err.split(expected, 1)[1]  # the fix names a command
    assert not out.exists()


def test_truncated_or_foreign_zip_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pkg = identity_package(tmp_path / "model", bands=2)
    data = write_zip(pkg, tmp_path / "full.zip").read_bytes()
    img = write_tif(tmp_path / "img.tif", np.ones((2, 32, 32), np.float32))
    capsys.readouterr()
    for name, blob in {"trunc.zip": data[: len(data) // 3], "noise.zip": b"PK\x03\x04" + bytes(500)}.items():
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(SystemExit) as exc:
            main(["predict", str(tmp_path / name), str(img), "-o", str(tmp_path / "map.tif")])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"{tmp_path / name}: not a readable model zip" in err and "eoforge package" in err


def test_long_reasons_are_cut_at_a_word_boundary() -> None:
    from eoforge.package.fields import one_line

    text = "alpha beta\ngamma " + "word " * 80
    line = one_line(text, 40)
    assert "\n" not in line and line.endswith(" …") and len(line) <= 42
    assert all(w in {"alpha", "beta", "gamma", "word", "…"} for w in line.split())


def test_package_run_refuses_a_folder_without_package(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not a model package"):
        package_run(tmp_path, tmp_path / "x.zip")


def test_serve_and_export_refuse_a_corrupt_package_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pkg = identity_package(tmp_path / "model", bands=2)
    _random_weights(pkg)
    capsys.readouterr()
    for argv in (
        ["serve", str(pkg), "--port", "1"],
        ["export", str(pkg), "--onnx"],
        ["package", str(pkg), "-o", str(tmp_path / "m.zip")],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "model.safetensors is not a readable safetensors file" in err, (
            err
        )
    assert not (tmp_path / "m.zip").exists()


def test_predict_cli_takes_the_zip_and_onnx_reads_it(tmp_path: Path) -> None:
    pkg = identity_package(tmp_path / "model", bands=2)
    zpath = write_zip(pkg, tmp_path / "model.zip")
    a = np.zeros((2, 40, 72), np.float32)
    a[0] = np.repeat(np.arange(72)[None, :] // 24, 40, 0)
    img = write_tif(tmp_path / "img.tif", a)
    main(["-q", "predict", str(zpath), str(img), "-o", str(tmp_path / "z.tif")])
    main(["-q", "predict", str(pkg), str(img), "-o", str(tmp_path / "f.tif")])
    import rasterio

    with rasterio.open(tmp_path / "z.tif") as z, rasterio.open(tmp_path / "f.tif") as f:
        assert np.array_equal(z.read(1), f.read(1))
        assert np.array_equal(z.read(1), (a[0].astype(np.uint8) + 1) * 10)
    x = a[None, :, :32, :64]
    assert np.array_equal(
        OnnxPredictor.from_package(zpath).predict_index(x), a[None, 0, :32, :64].astype(np.uint8)
    )


def test_onnx_predictor_drives_the_streaming_engine(tmp_path: Path) -> None:
    """The interface `--backend onnx` relies on: predict_scene with an OnnxPredictor gives the torch map."""
    from eoforge.predict import predict_scene

    pkg = identity_package(tmp_path / "model", bands=2)
    a = np.random.default_rng(3).uniform(-0.4, 2.4, (2, 80, 112)).astype(np.float32)
    a[:, :5, :5] = np.nan
    img = write_tif(tmp_path / "img.tif", a)
    predict_scene(load_package(pkg), [img], tmp_path / "torch.tif")
    predict_scene(OnnxPredictor.from_package(pkg), [img], tmp_path / "onnx.tif")  # type: ignore[arg-type]
    import rasterio

    with rasterio.open(tmp_path / "torch.tif") as t, rasterio.open(tmp_path / "onnx.tif") as o:
        assert np.array_equal(t.read(1), o.read(1))
        assert (o.read(1)[:5, :5] == 255).all()


def test_encoder_depth_travels_with_the_package(tmp_path: Path) -> None:
    import dataclasses

    torch.manual_seed(0)
    model = create_model("unet", BANDS, len(CLASSES), "resnet18", encoder_depth=3).eval()
    meta = dataclasses.replace(_meta(), encoder_depth=3)
    pkg = save_package(tmp_path / "model", model, meta, {"model": {"arch": "unet"}}, onnx=False)
    stored = json.loads((pkg / "eoforge.json").read_text())
    assert stored["encoder_depth"] == 3
    assert "3 stages" in json.loads((pkg / "item.json").read_text())["properties"]["mlm:architecture"]
    pred = load_package(pkg)  # rebuilt from the registry at depth 3: strict load of the pruned weights
    x = _inputs()[1:]
    assert tuple(pred.logits(x).shape) == (1, len(CLASSES), 64, 96)
    state = {k: v for k, v in model.state_dict().items()}
    assert not any(k.startswith("encoder.layer3.") or k.startswith("encoder.layer4.") for k in state)
    plain = save_package(
        tmp_path / "plain", create_model("unet", BANDS, 3, "resnet18"), _meta(), {}, onnx=False
    )
    assert "encoder_depth" not in json.loads((plain / "eoforge.json").read_text())  # older format unchanged
