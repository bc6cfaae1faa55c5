"""Run-folder state: an exclusive lock on ``OUT`` and fingerprints of the files a stage reads or wrote.

The lock is ``fcntl.flock`` on ``OUT/.eoforge.lock``: the kernel releases it when its process ends, however
it ends (SIGKILL included), so a stale lock cannot block a later run; the file also holds the owner's pid for
the message. A fingerprint is ``[size, mtime_ns, sha256]`` per file (the content hash for files up to
:data:`HASH_LIMIT` bytes, so a small file replaced under the same name with the same size and time is seen too).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from eoforge.errors import InputError, output_error

try:
    import fcntl
except ImportError:  # Windows: no flock; runs there are not locked
    fcntl = None  # type: ignore[assignment]

LOCK = ".eoforge.lock"
HASH_LIMIT = 16 * 2**20
_held: dict[Path, int] = {}


@contextlib.contextmanager
def run_lock(out: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder ``out`` (re-entrant within one process).

    A second process gets a one-line :class:`InputError` naming the folder and the pid holding it.
    """
    key = Path(out).resolve()
    # Lightning's multi-device launcher re-runs the command in child processes (LOCAL_RANK > 0) while the
    # parent holds the lock: they work under the parent's lock.
    if fcntl is None or key in _held or os.environ.get("LOCAL_RANK", "0") != "0":
        yield
        return
    path = key / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise output_error(exc, path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise InputError(
            f"{out}: another eoforge process (pid {owner}) is writing this run folder; wait for it to finish "
            "or give another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = fd
    try:
        yield
    finally:
        del _held[key]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def file_fingerprint(path: Path) -> list[Any]:
    """``[size, mtime_ns, sha256 or None]`` of one file (content hash only up to :data:`HASH_LIMIT`)."""
    st = path.stat()
    digest = None
    if st.st_size <= HASH_LIMIT:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return [st.st_size, st.st_mtime_ns, digest]


def _files(path: Path) -> list[Path]:
    """A file with its sidecars (``x.shp`` → ``x.dbf``, ``x.tif.aux.xml``), or every file under a folder."""
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    if not path.is_file():
        return []
    side = set(path.parent.glob(glob.escape(path.stem) + ".*")) | set(
        path.parent.glob(glob.escape(path.name) + ".*")
    )
    transient = ("-wal", "-shm", "-journal", ".lock")  # SQLite/GeoPackage and lock files come and go
    return sorted({path, *(p for p in side if p.is_file() and not p.name.endswith(transient))})


def paths_in(section: Any) -> list[Path]:
    """Every existing local file or folder named by an absolute path (or glob) in a dumped config section."""
    found: list[Path] = []
    if isinstance(section, dict):
        for v in section.values():
            found.extend(paths_in(v))
    elif isinstance(section, list):
        for v in section:
            found.extend(paths_in(v))
    elif isinstance(section, str) and os.path.isabs(section) and "://" not in section:
        if any(ch in section for ch in "*?["):
            found.extend(Path(p) for p in sorted(glob.glob(section)))
        elif os.path.exists(section):
            found.append(Path(section))
    return found


def fingerprint(paths: Iterable[Path]) -> dict[str, list[Any]]:
    """Fingerprints of ``paths`` (folders expanded, sidecar files included), keyed by path."""
    out: dict[str, list[Any]] = {}
    for p in paths:
        for f in _files(p):
            with contextlib.suppress(OSError):
                out[str(f)] = file_fingerprint(f)
    return out


def tree_digest(paths: Iterable[Path]) -> str | None:
    """A digest of the names, sizes and mtimes of every file under ``paths``; None when one is missing.

    Cheap (no content read): it tells whether a stage's outputs are still those it wrote.
    """
    h = hashlib.sha256()
    for p in paths:
        if not p.exists():
            return None
        for f in _files(p) if p.is_dir() else [p]:
            try:
                st = f.stat()
            except OSError:
                return None
            h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_state(path: Path) -> dict[str, dict[str, Any]]:
    """``stages.json``: per finished stage its ``config`` hash, ``inputs`` fingerprints and ``outputs`` digest.

    An unreadable file or one in an older format means nothing is known (every stage runs).
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, dict) and {"config", "inputs", "outputs"} <= set(v)}


def changed_inputs(old: dict[str, list[Any]], new: dict[str, list[Any]]) -> list[str]:
    """Paths whose fingerprint differs (added, removed, or another size / time / content)."""
    changed = [k for k in new if k not in old or old[k][0] != new[k][0] or old[k][2] != new[k][2]]
    changed += [k for k in old if k not in new]
    # the time alone counts only for large files, whose content is not hashed
    changed += [k for k in new if k in old and new[k][2] is None and old[k][1] != new[k][1]]
    return sorted(set(changed))
