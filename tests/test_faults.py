"""Fault injection (issue 12): output-side OS errors, outputs that are inputs, run-folder state, locks, modes.

Every error path asserts exit code 2, exactly one line on stderr, no traceback, and no new file under its
final name. The tests run as root on CI machines, where chmod does not stop writes: read-only and full disks
are injected by monkeypatching the write calls, and unwritable paths by putting a file where a folder goes.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import write_tif
from helpers import identity_package

from eoforge.cli import main
from eoforge.io.atomic import atomic_dir, atomic_path, current_umask, sweep_temporaries, write_text

TINY = {"arch": "test-tiny", "encoder": "none"}


def _files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")} if root.exists() else set()


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".tmp" in p.name]


@pytest.fixture
def package(tmp_path: Path) -> Path:
    return identity_package(tmp_path / "model", bands=1, class_ids=(1, 2, 3))


@pytest.fixture
def image(tmp_path: Path) -> Path:
    return write_tif(tmp_path / "img.tif", (np.arange(64 * 64).reshape(64, 64) % 3).astype(np.float32))


def _config(scene: dict, **sections: object) -> Path:
    cfg = {
        "inputs": {
            "images": [str(p) for p in scene["images"]],
            "labels": {"path": str(scene["labels"]), "column": "cover"},
            "classes": scene["classes"],
        },
        "chips": {
            "size": 32,
            "stride": 16,
            "min_valid": 0.3,
            "split": {"val": 0.25, "test": 0.25, "block_size": 32},
        },
        "model": TINY,
        "train": {"epochs": 1, "batch_size": 4},
        "predict": {"tile": 64, "overlap": 16},
        **sections,
    }
    path = scene["dir"] / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ---------------------------------------------------------------- predict: the output path


def test_predict_output_is_a_folder(
    tmp_path: Path, package: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "maps").mkdir()
    before = _files(tmp_path)
    err = _fails(["predict", str(package), str(image), "-o", str(tmp_path / "maps")], capsys)
    assert "maps: is a folder; give the output a file name" in err
    assert _files(tmp_path) == before


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink", "model-file"])
def test_predict_refuses_to_overwrite_an_input(
    tmp_path: Path, package: Path, image: Path, link: str, capsys: pytest.CaptureFixture[str]
) -> None:
    target = {
        "same": image,
        "symlink": tmp_path / "alias.tif",
        "hardlink": tmp_path / "hard.tif",
        "model-file": package / "eoforge.json",
    }[link]
    if link == "symlink":
        target.symlink_to(image)
    elif link == "hardlink":
        os.link(image, target)
    protected = package / "eoforge.json" if link == "model-file" else image
    data = protected.read_bytes()
    err = _fails(["predict", str(package), str(image), "-o", str(target)], capsys)
    assert f"{target}: is also an input" in err and "choose another output path" in err
    assert protected.read_bytes() == data


def test_predict_under_a_file_is_one_line(
    tmp_path: Path, package: Path, image: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "notes.txt").write_text("x")
    err = _fails(["predict", str(package), str(image), "-o", str(tmp_path / "notes.txt" / "map.tif")], capsys)
    assert "notes.txt" in err and "choose another" in err
    assert not (tmp_path / "notes.txt" / "map.tif").exists()


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.EACCES, "fix the permissions"),
        (errno.EROFS, "read-only"),
        (errno.ENOSPC, "the disk is full"),
    ],
)
def test_predict_unwritable_folder(
    tmp_path: Path,
    package: Path,
    image: Path,
    code: int,
    fix: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A folder that refuses new files (permissions, read-only mount, full disk): refused before any work."""
    import tempfile

    real = tempfile.mkstemp

    def refuse(*args: object, **kw: object) -> tuple[int, str]:
        if Path(str(kw.get("dir"))) == tmp_path / "out":
            raise OSError(code, os.strerror(code), str(tmp_path / "out" / "x"))
        return real(*args, **kw)  # type: ignore[call-overload,no-any-return]

    (tmp_path / "out").mkdir()
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    err = _fails(["predict", str(package), str(image), "-o", str(tmp_path / "out" / "map.tif")], capsys)
    assert err.startswith(f"error: {tmp_path / 'out' / 'map.tif'}: ") and fix in err
    assert list((tmp_path / "out").iterdir()) == []


def test_predict_disk_full_while_writing(
    tmp_path: Path,
    package: Path,
    image: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ENOSPC in the middle of the COG copy: one line naming the map, nothing left behind."""
    import rasterio.shutil

    def full(*args: object, **kw: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rasterio.shutil, "copy", full)
    before = _files(tmp_path)
    err = _fails(["predict", str(package), str(image), "-o", str(tmp_path / "map.tif")], capsys)
    assert f"{tmp_path / 'map.tif'}: No space left on device; the disk is full" in err
    assert _files(tmp_path) == before


def test_predict_not_enough_free_space_is_refused_up_front(
    tmp_path: Path,
    package: Path,
    image: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))  # type: ignore[attr-defined]
    err = _fails(["predict", str(package), str(image), "-o", str(tmp_path / "map.tif")], capsys)
    assert "map.tif" in err and "MiB free" in err and "free some space" in err
    assert not (tmp_path / "map.tif").exists()


def test_predict_sweeps_what_a_killed_predict_left(tmp_path: Path, package: Path, image: Path) -> None:
    dead = tmp_path / ".map.tif.999999999.abc123.tmp"
    dead.write_bytes(b"half a map")
    (tmp_path / ".map.tif.999999999.abc123.tmp.raw.tif").write_bytes(b"raw")
    alive = tmp_path / f".map.tif.{os.getpid()}.zzz.tmp"  # a live process's temporary stays
    alive.write_bytes(b"in progress")
    other = tmp_path / ".other.tif.999999999.abc123.tmp"  # another output's: not this command's business
    other.write_bytes(b"x")
    main(["-q", "predict", str(package), str(image), "-o", str(tmp_path / "map.tif")])
    assert (tmp_path / "map.tif").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == sorted(
        [alive.name, other.name]
    )


# ---------------------------------------------------------------- the atomic helpers


def test_atomic_outputs_respect_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o750
    old = os.umask(0o002)
    try:
        write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o664


def test_atomic_helpers_turn_output_errors_into_one_line(tmp_path: Path) -> None:
    from eoforge.errors import DataError

    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match=r"dir: Is a directory; it is a folder"):
        write_text(tmp_path / "dir", "x")
    (tmp_path / "file").write_text("x")
    with (
        pytest.raises(DataError, match=r"file: a file is in the way of a folder"),
        atomic_dir(tmp_path / "file"),
    ):
        pass
    full = r"out\.txt: No space left on device; the disk is full"
    with pytest.raises(DataError, match=full), atomic_path(tmp_path / "out.txt") as tmp:
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    # an error reading some other file inside the block is not the output's: it passes through unchanged
    with pytest.raises(FileNotFoundError) as exc, atomic_path(tmp_path / "out.txt"):
        (tmp_path / "missing-input.tif").read_bytes()
    assert not isinstance(exc.value, DataError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file"]


def test_sweep_keeps_live_and_foreign_entries(tmp_path: Path) -> None:
    (tmp_path / ".x.999999999.a.tmp").mkdir()
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".y.999999999.b.tmp").write_text("")
    (tmp_path / ".z.999999999.old.tmp").mkdir()
    (tmp_path / f".w.{os.getpid()}.c.tmp").write_text("")
    (tmp_path / ".hidden.tmp").write_text("")  # not our naming
    removed = sweep_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [
        ".x.999999999.a.tmp",
        ".y.999999999.b.tmp",
        ".z.999999999.old.tmp",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".w.{os.getpid()}.c.tmp", ".hidden.tmp", "sub"]
    )


# ---------------------------------------------------------------- the run folder


def test_out_is_a_file(tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(scene)
    (tmp_path / "out").write_text("not a folder")
    for cmd in ("run", "prepare", "train"):
        err = _fails([cmd, str(cfg), "-o", str(tmp_path / "out")], capsys)
        assert "out: is a file, not a folder" in err
    assert (tmp_path / "out").read_text() == "not a folder"
    err = _fails(["prepare", str(cfg), "-o", str(tmp_path / "out" / "sub")], capsys)
    assert "sub: Not a directory; a part of the path is a file" in err


def test_run_folder_write_failures(
    tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """EROFS on the folder (probe), then ENOSPC while the prepared stack is written: one line, nothing kept."""
    import tempfile

    cfg = _config(scene)
    out = tmp_path / "out"
    real = tempfile.mkstemp

    def ro(*args: object, **kw: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kw.get("dir")))

    monkeypatch.setattr(tempfile, "mkstemp", ro)
    err = _fails(["prepare", str(cfg), "-o", str(out)], capsys)
    assert f"{out}: Read-only file system; the file system is read-only" in err
    monkeypatch.setattr(tempfile, "mkstemp", real)

    real_write = Path.write_text

    def full(self: Path, *args: object, **kw: object) -> int:
        if self.name == "scene.json":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "write_text", full)
    err = _fails(["prepare", str(cfg), "-o", str(out)], capsys)
    assert f"{out / 'prepared'}: No space left on device; the disk is full" in err
    assert not (out / "prepared").exists() and _temporaries(out) == []
    assert (
        "prepare" not in json.loads((out / "stages.json").read_text())
        if (out / "stages.json").exists()
        else True
    )


@pytest.fixture
def held_lock(tmp_path: Path) -> Iterator[Path]:
    """The run folder locked as another process would: flock on its lock file, pid 4242 inside."""
    out = tmp_path / "out"
    out.mkdir()
    fd = os.open(out / ".eoforge.lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242\n")
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield out
    finally:
        os.close(fd)


def test_a_second_run_on_one_folder_is_refused(
    held_lock: Path, scene: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(scene)
    before = _files(held_lock)
    for cmd in ("run", "prepare", "chips"):
        err = _fails([cmd, str(cfg), "-o", str(held_lock)], capsys)
        assert f"{held_lock}: another eoforge process (pid 4242) is writing this run folder" in err
    assert _files(held_lock) == before


def test_a_stale_lock_does_not_block(tmp_path: Path, scene: dict) -> None:
    """A lock file left by a killed process (its pid gone, no flock held) is taken over."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".eoforge.lock").write_text("999999999\n")
    main(["-q", "prepare", str(_config(scene)), "-o", str(out)])
    assert (out / "prepared" / "scene.json").is_file()
    assert (out / ".eoforge.lock").read_text().strip() == str(os.getpid())


# ---------------------------------------------------------------- resume state


def _state(out: Path) -> dict:
    return json.loads((out / "stages.json").read_text())


def test_stage_commands_record_state_and_refuse_stale_intermediates(
    tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(scene)
    out = tmp_path / "out"
    (out / "prepared").mkdir(parents=True)
    (out / ".prepared.999999999.k2.tmp").mkdir()  # left by a killed run: swept
    main(["-q", "prepare", str(cfg), "-o", str(out)])
    assert list(_state(out)) == ["prepare"] and not (out / ".prepared.999999999.k2.tmp").exists()
    rec = _state(out)["prepare"]
    assert str(scene["images"][0]) in rec["inputs"] and str(scene["labels"]) in rec["inputs"]
    size, _, sha = rec["inputs"][str(scene["labels"])]
    assert size == scene["labels"].stat().st_size and len(sha) == 64
    main(["-q", "chips", str(cfg), "-o", str(out)])
    assert list(_state(out)) == ["prepare", "chips"]
    mask = current_umask()  # folders and files written through the atomic helpers follow it
    assert stat.S_IMODE((out / "prepared").stat().st_mode) == 0o777 & ~mask
    assert stat.S_IMODE((out / "stages.json").stat().st_mode) == 0o666 & ~mask

    # OUT/config.yaml follows the config of the latest command
    raw = yaml.safe_load(cfg.read_text())
    raw["chips"]["min_valid"] = 0.2
    cfg.write_text(yaml.safe_dump(raw))
    main(["-q", "chips", str(cfg), "-o", str(out)])
    assert yaml.safe_load((out / "config.yaml").read_text())["chips"]["min_valid"] == 0.2

    # a truncated intermediate: the next stage refuses it and names the stage to run
    image = out / "prepared" / "image.tif"
    image.write_bytes(image.read_bytes()[:100])
    err = _fails(["train", str(cfg), "-o", str(out)], capsys)
    assert (
        "scene.json: out of date (its outputs were changed or truncated since it ran); run `eoforge prepare`"
        in err
    )
    # an input replaced under the same name (same size): chips refuses, prepare re-runs and drops later stages
    band = scene["images"][1]
    with __import__("rasterio").open(band) as src:
        a = src.read(1)
    a[10:20, 10:20] += 1
    write_tif(band, a, nodata=0)
    err = _fails(["chips", str(cfg), "-o", str(out)], capsys)
    assert f"out of date (input changed: {band})" in err
    main(["-q", "prepare", str(cfg), "-o", str(out)])
    assert list(_state(out)) == ["prepare"]


def test_run_resumes_on_fingerprints_and_predict_changes_do_not_retrain(tmp_path: Path, scene: dict) -> None:
    from eoforge.config import load_config
    from eoforge.pipeline import run

    cfg = _config(scene)
    out = tmp_path / "out"
    seen: list[tuple[str, bool]] = []

    def again() -> list[str]:
        seen.clear()
        run(load_config(cfg), out, on_stage=lambda s, skipped: seen.append((s, skipped)))
        return [s for s, skipped in seen if not skipped]

    assert again() == ["prepare", "chips", "train", "evaluate", "predict"]
    assert again() == []
    weights = (out / "model" / "model.pt").read_bytes()
    # only predict: changes: the model is kept, the map and its evaluation are redone
    raw = yaml.safe_load(cfg.read_text())
    raw["predict"]["overlap"] = 8
    cfg.write_text(yaml.safe_dump(raw))
    ran = again()
    assert "train" not in ran and "predict" in ran
    assert (out / "model" / "model.pt").read_bytes() == weights
    # a labels file rewritten with the same content and a new time is not a change; new content is
    os.utime(scene["labels"], ns=(1, 1))
    assert again() == []
    import geopandas as gpd

    gdf = gpd.read_file(scene["labels"])
    gdf.loc[2, "cover"] = "water"
    gdf.to_file(scene["labels"])
    assert again() == ["prepare", "chips", "train", "evaluate", "predict"]
    # a truncated chip store re-runs chips and what follows
    index = out / "chips" / "index.parquet"
    index.write_bytes(index.read_bytes()[:50])
    assert again() == ["chips", "train", "evaluate", "predict"]
    assert _temporaries(out) == []
    # a damaged record means nothing is known: everything runs again, then the record is whole
    (out / "stages.json").write_text('{"prepare": {"config"')
    assert again() == ["prepare", "chips", "train", "evaluate", "predict"]
    assert list(_state(out)) == ["prepare", "chips", "train", "evaluate", "predict"]


def test_disk_full_while_lightning_writes_a_checkpoint(
    tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """OUT/train is written in place by Lightning: ENOSPC there is one line too, and no model/ appears."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    cfg = _config(scene)
    out = tmp_path / "out"
    main(["-q", "prepare", str(cfg), "-o", str(out)])
    main(["-q", "chips", str(cfg), "-o", str(out)])

    def full(self: object, trainer: object, filepath: str) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ModelCheckpoint, "_save_checkpoint", full)
    err = _fails(["train", str(cfg), "-o", str(out)], capsys)
    assert f"{out}: No space left on device; the disk is full" in err
    assert not (out / "model").exists() and list(_state(out)) == ["prepare", "chips"]


def test_other_os_errors_naming_a_path_are_one_line(
    tmp_path: Path, scene: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import eoforge.pipeline

    def denied(cfg: object, out: Path) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "labels.gpkg"))

    monkeypatch.setattr(eoforge.pipeline, "stage_prepare", denied)
    err = _fails(["prepare", str(_config(scene)), "-o", str(tmp_path / "out")], capsys)
    assert (
        err
        == f"error: {tmp_path / 'labels.gpkg'}: Permission denied; fix the permissions of the file or its folder, or choose another path"
    )

    def bug(cfg: object, out: Path) -> None:
        raise OSError(
            errno.EINVAL, "Invalid argument"
        )  # no path, not about a disk: a bug keeps its traceback

    monkeypatch.setattr(eoforge.pipeline, "stage_prepare", bug)
    with pytest.raises(OSError, match="Invalid argument"):
        main(["prepare", str(_config(scene)), "-o", str(tmp_path / "out")])
