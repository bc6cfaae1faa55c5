"""Write to a temporary name next to the target, then rename: nothing is ever half-written.

Temporary names are ``.NAME.PID.RANDOM.tmp`` (files and folders) beside the target, so a process killed
mid-write (SIGKILL, power loss) leaves a hidden entry that :func:`sweep_temporaries` removes later, once the
process that made it is gone. Outputs get the permissions the umask gives ordinary files and folders
(``mkstemp``/``mkdtemp`` alone would leave them 0600/0700). An ``OSError`` of the output side (permissions,
read-only or full disk, a folder where a file should go) becomes a one-line :class:`~eoforge.errors.DataError`
naming the target.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from eoforge.errors import EoforgeError, output_error

log = logging.getLogger(__name__)

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<rand>[^.]+)\.tmp(\..*)?$")
# errnos that are about the output whatever file the failing call named
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc), else set and reset."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def _is_output_error(exc: OSError, *paths: Path) -> bool:
    """Whether ``exc`` is about the output: a disk-wide errno, or a failing call on one of ``paths``."""
    if isinstance(exc, EoforgeError):
        return False
    if exc.errno in OUTPUT_ERRNOS:
        return True
    name = exc.filename
    if name is None:
        return False
    p = Path(os.fsdecode(name))
    return any(p == q or q in p.parents for q in paths)


def _prepare_parent(target: Path, want_dir: bool) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not want_dir and target.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
        if want_dir and target.exists() and not target.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "a file is in the way of a folder", str(target))
    except OSError as exc:
        if isinstance(exc, EoforgeError):
            raise
        raise output_error(exc, target) from None


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path in the target's folder; on success it replaces ``target``."""
    target = Path(target)
    _prepare_parent(target, want_dir=False)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise output_error(exc, target) from None
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
        except OSError as exc:
            if _is_output_error(exc, tmp_path, tmp_path.parent / (tmp_path.name + ".raw.tif")):
                raise output_error(exc, target) from None
            raise
        try:
            os.chmod(tmp_path, 0o666 & ~current_umask())
            os.replace(tmp_path, target)
        except OSError as exc:
            raise output_error(exc, target) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` (an old one is removed)."""
    target = Path(target)
    _prepare_parent(target, want_dir=True)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise output_error(exc, target) from None
    try:
        try:
            yield tmp
        except OSError as exc:
            if _is_output_error(exc, tmp):
                raise output_error(exc, target) from None
            raise
        try:
            os.chmod(tmp, 0o777 & ~current_umask())
            if target.exists():
                old = target.with_name(f"{_temp_prefix(target)}old.tmp")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(target, old)
                os.replace(tmp, target)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
        except OSError as exc:
            raise output_error(exc, target) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_temporaries(folder: str | Path, depth: int = 1, name: str | None = None) -> list[Path]:
    """Remove ``.NAME.PID.*.tmp`` entries left in ``folder`` (and ``depth`` levels below) by dead processes.

    Entries of a process that is still running (or of this one) are kept; with ``name`` only the
    temporaries of that output name. Returns what was removed.
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is not None and name in (None, m["name"]) and not _alive(int(m["pid"])):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
            log.info("removed %s, left by an interrupted run", entry)
        elif m is None and depth > 0 and entry.is_dir() and not entry.is_symlink():
            removed.extend(sweep_temporaries(entry, depth - 1, name))
    return removed
