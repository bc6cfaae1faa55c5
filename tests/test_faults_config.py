"""Fault injection on the config (issue 12, cause 3): values that validate today but break later are refused
at load time, in one line naming the key; and a walk over every config field feeds each an out-of-range value.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from eoforge.cli import main
from eoforge.config import RunConfig, load_config, parse_config
from eoforge.errors import InputError

BASE: dict[str, Any] = {
    "inputs": {
        "images": ["/data/b1.tif"],
        "labels": {"path": "/data/labels.gpkg", "column": "cover"},
        "classes": {1: "water", 2: "forest"},
    },
    "chips": {"size": 32, "split": {"val": 0.2, "test": 0.2}},
    "train": {"epochs": 1},
}


def _with(path: str, value: object) -> dict[str, Any]:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    *parents, leaf = path.split(".")
    node = raw
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = value
    return raw


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("inputs.colors", {1: "red", 2: "#00ff00"}, "colour of class 1 is 'red'; write colours as '#rrggbb'"),
        ("inputs.colors", {1: "#zzzzzz"}, "colour of class 1 is '#zzzzzz'"),
        ("inputs.colors", {1: "#abc"}, "colour of class 1 is '#abc'"),
        ("inputs.colors", {7: "#112233"}, "colors for [7], which are not class ids"),
        ("inputs.classes", {1: "Water", 2: "water "}, "classes 1 and 2 are both named"),
        ("inputs.classes", {1: "water", 2: " "}, "class 2 has an empty name"),
        ("train.lr", float("inf"), "train.lr: Input should be a finite number"),
        ("train.lr", float("nan"), "train.lr: Input should be a finite number"),
        ("train.lr", 5.0, "train.lr: Input should be less than or equal to 1"),
        ("train.weight_decay", float("inf"), "train.weight_decay: Input should be a finite number"),
        ("compute.connect_timeout", float("inf"), "compute.connect_timeout: Input should be a finite number"),
        ("train.accelerator", "tpux", "unknown accelerator 'tpux'; choose one of: auto, cpu, gpu"),
        ("train.devices", 0, "devices must be at least 1"),
        ("train.devices", "many", "devices must be a number of devices or 'auto'"),
        ("predict.tile", 0, "tile must be a positive multiple of 32"),
        ("predict.tile", 48, "tile must be a positive multiple of 32"),
        (
            "predict.overlap",
            64,
            "predict.overlap 64 must be smaller than the predict tile 64",
        ),  # default tile
        ("chips.split.test", 0.0, "chips.split.test is 0 but `eoforge run` evaluates on the test split"),
        ("inputs.labels.crs", "EPSG:99999999", "'EPSG:99999999' is not a CRS; write it as e.g. EPSG:4326"),
    ],
)
def test_values_that_would_break_later_are_refused_at_load(key: str, value: object, message: str) -> None:
    with pytest.raises(InputError) as exc:
        parse_config(_with(key, value), source="run.yaml")
    text = str(exc.value)
    assert text.startswith("run.yaml: invalid config (") and message in text, text
    assert "\n" not in text


def test_nan_nodata_stays_allowed() -> None:
    assert str(parse_config(_with("inputs.nodata", float("nan"))).inputs.nodata) == "nan"


def test_duplicate_yaml_keys_name_key_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(BASE, sort_keys=False) + "train:\n  lr: 0.1\n")
    err = _fails(["prepare", str(path), "-o", str(tmp_path / "out")], capsys)
    assert f"{path}: key 'train' appears twice in one section (line " in err and "keep one of them" in err
    text = "inputs:\n  images: [a.tif]\n  classes: {1: a, 1: b}\n"
    path.write_text(text)
    with pytest.raises(InputError, match=r"key '1' appears twice in one section \(line 3\)"):
        load_config(path)
    assert not (tmp_path / "out").exists()


def test_non_utf8_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run.yaml"
    path.write_bytes(yaml.safe_dump(BASE).replace("water", "eau claire \xe9").encode("latin-1"))
    err = _fails(["prepare", str(path), "-o", str(tmp_path / "out")], capsys)
    assert f"{path}: not UTF-8 text (byte " in err and "save the config as UTF-8" in err


def _cfg_file(tmp_path: Path, scene: dict, **train: object) -> Path:
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["inputs"].update(
        images=[str(p) for p in scene["images"]],
        labels={"path": str(scene["labels"]), "column": "cover"},
        classes=scene["classes"],
    )
    raw["train"].update(train)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ({"accelerator": "gpu"}, "train.accelerator: gpu but no CUDA GPU is visible on this machine"),
        ({"accelerator": "cuda"}, "train.accelerator: cuda but no CUDA GPU is visible"),
        ({"devices": 4096}, "train.devices: 4096 on CPU starts 4096 training processes but this machine has"),
        ({"accelerator": "cpu", "devices": 4096}, "train.devices: 4096 on CPU starts"),
    ],
)
def test_hardware_the_machine_lacks_is_refused_before_any_work(
    tmp_path: Path, scene: dict, train: dict, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = _cfg_file(tmp_path, scene, **train)
    out = tmp_path / "out"
    err = _fails(["run", str(cfg), "-o", str(out)], capsys)
    assert message in err
    assert not (out / "prepared").exists()


# ------------------------------------------------------------- every field, an out-of-range value


def _models(ann: Any) -> list[type[BaseModel]]:
    args = typing.get_args(ann) if typing.get_origin(ann) in (typing.Union, types.UnionType) else (ann,)
    return [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]


def _leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any, list[Any]]]:
    """(dotted key, annotation, constraint metadata) of every non-model field under ``model``."""
    out = []
    for name, f in model.model_fields.items():
        key = f"{prefix}{name}"
        subs = _models(f.annotation)
        if subs:
            out.extend(_leaves(subs[0], key + "."))
        else:
            out.append((key, f.annotation, list(f.metadata)))
    return out


def _bad_values(ann: Any, metadata: list[Any]) -> list[object]:
    """Out-of-range values for a field: past each numeric bound, non-finite floats, a wrong type always."""
    bad: list[object] = [object()]  # a value of no YAML type at all
    for m in metadata:
        for attr, delta in (("ge", -1), ("gt", 0), ("le", 1), ("lt", 0)):
            bound = getattr(m, attr, None)
            if bound is not None:
                step = 1 if isinstance(bound, int) and not isinstance(bound, bool) else 1e-6
                bad.append(bound + delta * step if delta else bound)
    args = set(typing.get_args(ann)) | {ann}
    if float in args:
        bad.append(float("inf"))
    if typing.get_origin(ann) is typing.Literal:
        bad.append("no-such-choice")
    return bad


UNBOUNDED = {  # numeric fields that legitimately take any value, and why
    "inputs.nodata": "any number (NaN included) can be a nodata value",
    "inputs.labels.nodata": "any number can be a label raster's nodata value",
    "chips.split.seed": "any integer is a seed",
    "chips.seed": "any integer is a seed",
    "chips.points.seed": "any integer is a seed",
    "train.seed": "any integer is a seed",
    "evaluate.seed": "any integer is a seed",
    "inputs.labels.value": "checked against the class ids",
    "inputs.labels.background": "checked against the class ids",
}


def test_every_field_refuses_out_of_range_values() -> None:
    leaves = _leaves(RunConfig)
    assert len(leaves) > 30
    for key, ann, metadata in leaves:
        numeric = {int, float} & ({ann} | set(typing.get_args(ann)))
        has_bounds = any(getattr(m, a, None) is not None for m in metadata for a in ("ge", "gt", "le", "lt"))
        if numeric and not has_bounds and key not in UNBOUNDED:
            # a custom validator stands for the bounds: it must refuse a negative value
            with pytest.raises(InputError):
                parse_config(_with(key, -(10**6)))
        for value in _bad_values(ann, metadata):
            if key == "inputs.nodata" and value == float("inf"):
                continue
            with pytest.raises(InputError) as exc:
                parse_config(_with(key, value), source="cfg")
            assert key.split(".")[-1] in str(exc.value), (key, value, str(exc.value))


def test_cli_prints_brackets_in_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "run [v2].yaml"
    path.write_text(yaml.safe_dump(_with("inputs.colors", {7: "#112233"})))
    err = _fails(["prepare", str(path), "-o", str(tmp_path / "out")], capsys)
    assert f"{path}: invalid config (" in err and "colors for [7], which are not class ids" in err
