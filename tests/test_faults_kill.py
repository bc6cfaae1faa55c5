"""Kill tests (issue 12): SIGKILL, SIGTERM and SIGINT at several points of `eoforge run` and `eoforge predict`.

A killed command leaves at most hidden temporaries (never a file under its final name); SIGINT exits 130 with
`aborted`, SIGTERM 143 with `terminated`, both after removing their temporaries; the restart sweeps what
SIGKILL left and reaches a result byte-identical to an uninterrupted run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from conftest import write_tif
from helpers import identity_package

from eoforge.cli import main

RUNNER = Path(__file__).parent / "fault_runner.py"


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


def _interrupt(args: list[str], point: str, sig: signal.Signals, tmp_path: Path) -> tuple[int, str, bool]:
    """Run the CLI in a child process, pause it at ``point``, send ``sig``; (exit code, stderr, paused)."""
    marker = tmp_path / f"marker-{point}-{sig.name}"
    env = {
        **os.environ,
        "EOFORGE_TEST_PAUSE": point,
        "EOFORGE_TEST_MARKER": str(marker),
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen(
        [sys.executable, str(RUNNER), "-q", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    paused = marker.exists()
    if proc.poll() is None:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err.strip(), paused


def _check_exit(code: int, err: str, sig: signal.Signals) -> None:
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    elif sig == signal.SIGTERM:
        assert code == 143 and err.splitlines()[-1] == "terminated", (code, err)
    else:
        assert code == 130 and err.splitlines()[-1] == "aborted", (code, err)
    assert "Traceback" not in err


@pytest.fixture
def config(scene: dict) -> Path:
    cfg = {
        "inputs": {
            "images": [str(p) for p in scene["images"]],
            "labels": {"path": str(scene["labels"]), "column": "cover"},
            "classes": scene["classes"],
        },
        "chips": {
            "size": 32,
            "stride": 8,
            "min_valid": 0.3,
            "split": {"val": 0.25, "test": 0.25, "block_size": 32},
        },
        "model": {"arch": "test-tiny", "encoder": "none"},
        "train": {"epochs": 2, "batch_size": 4},
        "predict": {"tile": 64, "overlap": 16},
    }
    path = scene["dir"] / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model" / "model.pt", weights_only=True)


def test_run_killed_at_several_points_then_resumed_is_identical(tmp_path: Path, config: Path) -> None:
    ref = tmp_path / "ref"
    main(["-q", "run", str(config), "-o", str(ref)])
    out = tmp_path / "out"
    args = ["run", str(config), "-o", str(out)]

    code, err, paused = _interrupt(args, "prepare", signal.SIGKILL, tmp_path)
    _check_exit(code, err, signal.SIGKILL)
    assert paused and _temporaries(out), "SIGKILL mid-write leaves a hidden temporary folder"
    assert not (out / "prepared").exists()  # never under its final name

    for sig in (signal.SIGTERM, signal.SIGINT):  # inside Lightning's training loop
        code, err, paused = _interrupt(args, "fit", sig, tmp_path)
        assert paused, err
        _check_exit(code, err, sig)
        assert _temporaries(out) == [] and not (out / "model").exists()

    code, err, paused = _interrupt(args, "predict", signal.SIGKILL, tmp_path)
    assert paused, err
    _check_exit(code, err, signal.SIGKILL)
    assert not (out / "map.tif").exists() and _temporaries(out)

    main(["-q", "run", str(config), "-o", str(out)])  # the restart
    assert _temporaries(out) == []
    assert (out / "map.tif").read_bytes() == (ref / "map.tif").read_bytes()
    got, want = _weights(out), _weights(ref)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_predict_killed_then_rerun_is_identical(tmp_path: Path) -> None:
    model = identity_package(tmp_path / "model", bands=1, class_ids=(1, 2, 3))
    rng = np.random.default_rng(1)
    image = write_tif(tmp_path / "img.tif", rng.integers(0, 3, (1, 300, 260)).astype(np.float32))
    ref = tmp_path / "ref.tif"
    main(["-q", "predict", str(model), str(image), "-o", str(ref)])
    out = tmp_path / "maps" / "map.tif"
    out.parent.mkdir()
    args = ["predict", str(model), str(image), "-o", str(out)]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        code, err, paused = _interrupt(args, "predict", sig, tmp_path)
        assert paused, err
        _check_exit(code, err, sig)
        assert not out.exists()
        left = _temporaries(out.parent)
        assert bool(left) == (sig == signal.SIGKILL), left
    main(["-q", "predict", str(model), str(image), "-o", str(out)])
    assert _temporaries(out.parent) == []
    assert out.read_bytes() == ref.read_bytes()
    with rasterio.open(out) as src:
        assert src.shape == (300, 260)
