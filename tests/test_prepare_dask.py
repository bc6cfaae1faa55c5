"""Prepare's windows as Dask tasks: the prepared files are the same bytes as an in-process run, for a warped
stack and a time stack, and the workers' sources are closed afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TRANSFORM, write_tif
from distributed import Client, LocalCluster, get_task_stream
from test_time_stack import run_cfg, series, write_dates

from eoforge.config import parse_config
from eoforge.prepare import parallel, prepare
from eoforge.prepare.stack import prepare_on


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0") as cl,
        Client(cl) as c,
    ):
        yield c


def _same_files(a: Path, b: Path) -> list[Path]:
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    return files


def test_dask_prepare_writes_the_same_bytes(scene: dict, tmp_path: Path, client: Client) -> None:
    # a second file shifted by 3 px: the stack is their intersection, read through the recipe's alignment
    shifted = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) + 1
    other = write_tif(tmp_path / "shifted.tif", shifted, transform=TRANSFORM @ TRANSFORM.translation(3, 0))
    raw = {
        "images": [str(scene["images"][0]), str(other)],
        "labels": {"path": str(scene["labels"]), "column": "cover"},
        "classes": scene["classes"],
    }
    cfg = parse_config({"inputs": raw, "prepare": {"normalize": "percentile"}})
    one = prepare(cfg.inputs, tmp_path / "one", block=16, prep=cfg.prepare)  # 16 windows
    with get_task_stream(client) as tasks:
        two = prepare_on(cfg.inputs, tmp_path / "two", block=16, prep=cfg.prepare, client=client)
    assert sum(str(t["key"]).startswith("prepare-window-") for t in tasks.data) == 16
    assert two.grid == one.grid and two.grid.width == 61
    assert {"image.tif", "labels.tif", "scene.json"} <= {p.name for p in _same_files(one.root, two.root)}
    assert not parallel._open_sources  # the workers closed the run's sources


def test_dask_prepare_of_a_time_stack(tmp_path: Path, client: Client) -> None:
    files = write_dates(tmp_path, series())
    cfg = run_cfg(tmp_path, images=files)
    one = prepare(cfg.inputs, tmp_path / "one", block=8)
    two = prepare_on(cfg.inputs, tmp_path / "two", block=8, client=client)
    assert one.temporal == two.temporal and one.bands == two.bands
    assert "stack.zarr/zarr.json" in {str(p) for p in _same_files(one.root, two.root)}


def test_compute_workers_run_prepare_on_a_local_cluster(scene: dict, tmp_path: Path) -> None:
    raw = {
        "images": [str(p) for p in scene["images"]],
        "labels": {"path": str(scene["labels"]), "column": "cover"},
        "classes": scene["classes"],
    }
    cfg = parse_config({"inputs": raw, "compute": {"workers": 1}})
    one = prepare(cfg.inputs, tmp_path / "one", block=32)
    two = prepare(cfg.inputs, tmp_path / "two", block=32, compute=cfg.compute)
    _same_files(one.root, two.root)
