"""Output fingerprints of a run folder: relative to it, compared by content, reusing recorded hashes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from eoforge.io.state import changed_files, run_relative, tree_fingerprint


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    out = tmp_path / "a"
    (out / "chips" / "chips.zarr").mkdir(parents=True)
    (out / "chips" / "chips.json").write_text('{"size": 32}')
    (out / "chips" / "chips.zarr" / "c0").write_bytes(bytes(range(256)) * 64)
    (out / "map.tif").write_bytes(b"\x00" * 1000)
    return out


NAMES = ("chips", "map.tif")


def test_keys_are_relative_so_a_moved_folder_has_the_same_fingerprints(run_folder: Path) -> None:
    before = tree_fingerprint(run_folder, NAMES)
    assert before is not None
    assert sorted(before) == ["chips/chips.json", "chips/chips.zarr/c0", "map.tif"]
    moved = shutil.move(run_folder, run_folder.parent / "b")
    assert tree_fingerprint(Path(moved), NAMES) == before


def test_new_times_are_no_change_and_a_changed_byte_is(run_folder: Path) -> None:
    old = tree_fingerprint(run_folder, NAMES)
    assert old is not None
    os.utime(run_folder / "map.tif", ns=(1, 1))  # a copy that did not keep the times
    now = tree_fingerprint(run_folder, NAMES, known=old)
    assert now is not None and changed_files(old, now) == [] and now["map.tif"][1] == 1
    data = bytearray((run_folder / "map.tif").read_bytes())
    data[500] = 1  # same size, another byte, another time
    (run_folder / "map.tif").write_bytes(bytes(data))
    changed = tree_fingerprint(run_folder, NAMES, known=now)
    assert changed is not None and changed_files(now, changed) == ["map.tif"]
    (run_folder / "chips" / "chips.json").write_text("{")  # truncated
    assert changed_files(now, tree_fingerprint(run_folder, NAMES, known=now) or {}) == [
        "chips/chips.json",
        "map.tif",
    ]
    (run_folder / "chips" / "chips.zarr" / "c0").unlink()  # a file gone from a folder: a change
    assert "chips/chips.zarr/c0" in changed_files(now, tree_fingerprint(run_folder, NAMES) or {})
    (run_folder / "map.tif").unlink()  # a named output gone: nothing to compare
    assert tree_fingerprint(run_folder, NAMES) is None


def test_recorded_hashes_spare_reading_files_of_unchanged_size_and_time(
    run_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = tree_fingerprint(run_folder, NAMES)
    opened: list[str] = []
    real_open = Path.open

    def spy(self: Path, *args: object, **kwargs: object) -> object:
        opened.append(self.name)
        return real_open(self, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", spy)
    assert tree_fingerprint(run_folder, NAMES, known=old) == old and opened == []
    os.utime(run_folder / "map.tif", ns=(1, 1))
    tree_fingerprint(run_folder, NAMES, known=old)
    assert opened == ["map.tif"]


def test_run_relative_names_paths_inside_the_run_folder_relative_to_it(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "a"
    assert run_relative(out / "prepared" / "image.tif", out) == "prepared/image.tif"
    assert run_relative(out / "maps" / "s0.tif", out) == "maps/s0.tif"
    outside = tmp_path / "data" / "band1.tif"
    assert run_relative(outside, out) == str(outside)
