"""Cheap up-front checks of output paths, so a run fails in its first second rather than after the work.

A run folder must not be a file and must be writable; a single output file must not be a folder, must not be
one of the inputs (same file, also through symbolic or hard links) and should fit on its disk.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from eoforge.errors import EoforgeError, InputError, output_error


def _probe_writable(folder: Path, shown: Path) -> None:
    """Create and remove a hidden file in ``folder``: the only test that also sees read-only mounts and ACLs."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".eoforge-probe.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise output_error(exc, shown) from None


def check_run_folder(out: str | Path) -> Path:
    """Create the run folder ``out`` if needed and check it is a writable folder (one-line errors)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: is a file, not a folder; give --out a folder (new or from an earlier run)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if isinstance(exc, EoforgeError):
            raise
        raise output_error(exc, out) from None
    _probe_writable(out, out)
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # same device and inode: catches symbolic and hard links
    except OSError:
        return False


def check_output_file(out: str | Path, inputs: Iterable[str | Path] = (), nbytes: int = 0) -> Path:
    """Check that ``out`` can be written as a new file: not a folder, not an input, its folder writable.

    ``inputs`` are files (or folders, whose files count) the command reads; ``nbytes`` an estimate of the
    space the output needs (checked against the free space of its disk when given).
    """
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give the output a file name (e.g. {out / 'map.tif'})")
    if out.exists():
        for src in inputs:
            src = Path(src)
            files = [p for p in src.rglob("*") if p.is_file()] if src.is_dir() else [src]
            if any(_same_file(out, f) for f in files):
                raise InputError(
                    f"{out}: is also an input ({src}); writing it would destroy the input, choose another "
                    "output path"
                )
    parent = out.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise output_error(NotADirectoryError(errno.ENOTDIR, "not a folder", str(probe)), out)
    if probe == parent:
        _probe_writable(parent, out)
    elif not os.access(probe, os.W_OK):
        raise output_error(PermissionError(errno.EACCES, "permission denied", str(probe)), out)
    if nbytes > 0:
        free = shutil.disk_usage(probe).free
        if free < nbytes:
            raise output_error(
                OSError(errno.ENOSPC, f"needs about {nbytes / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free"),
                out,
            )
    return out
