"""Run-folder state: an exclusive lock on ``OUT`` and fingerprints of the files a stage reads or wrote.

The lock is ``fcntl.flock`` on ``OUT/.eoforge.lock``: the kernel releases it when its process ends, however
it ends (SIGKILL included), so a stale lock cannot block a later run; the file also holds the owner's pid for
the message. A fingerprint is ``[size, mtime_ns, sha256]`` per file (the content hash for files up to
:data:`HASH_LIMIT` bytes, so a small file replaced under the same name with the same size and time is seen too).
A stage's outputs are fingerprinted by their path relative to the run folder and their whole content
(:func:`tree_fingerprint`), so a moved or copied run folder is still up to date.
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


def file_fingerprint(path: Path, limit: int | None = HASH_LIMIT, known: list[Any] | None = None) -> list[Any]:
    """``[size, mtime_ns, sha256 or None]`` of one file (content hash only up to ``limit`` bytes; None: always).

    ``known``, an earlier fingerprint of the file: when its size and time are the file's, its hash is taken
    as it is (the file is not read).
    """
    st = path.stat()
    if isinstance(known, list) and len(known) == 3 and known[2] and known[:2] == [st.st_size, st.st_mtime_ns]:
        return [st.st_size, st.st_mtime_ns, known[2]]
    digest = None
    if limit is None or st.st_size <= limit:
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


def tree_fingerprint(
    root: Path, names: Iterable[str], known: dict[str, list[Any]] | None = None
) -> dict[str, list[Any]] | None:
    """Fingerprints of the files ``root / name`` for ``names`` (every file under a folder), keyed by their POSIX
    path relative to ``root``; None when one is missing.

    The keys hold no trace of where ``root`` is, so a run folder moved or copied elsewhere keeps them. Every
    file's whole content is hashed, whatever its size, so outputs are compared by content: a copy that gave
    them new modification times (``cp -r``, scp, some file shares) is not a change, a changed byte is.
    ``known`` (the fingerprints recorded earlier) keeps a file of unchanged size and time from being read
    again: a stage's outputs are read once when it finishes, and again only after their times changed (an
    edit that keeps both size and time is not seen, as with the inputs' large files).
    """
    old = known or {}
    found: dict[str, list[Any]] = {}
    for name in names:
        path = root / name
        if not path.exists():
            return None
        for f in _files(path) if path.is_dir() else [path]:
            key = f.relative_to(root).as_posix()
            try:
                found[key] = file_fingerprint(f, limit=None, known=old.get(key))
            except OSError:
                return None
    return found


def run_relative(path: str | Path, out: str | Path) -> str:
    """``path`` as an output of the run folder ``out`` names it: relative to ``out`` (POSIX) when inside it, so
    the name stays true when the folder is moved or copied; else as given. A reader resolves it against the
    folder it reads from."""
    p, root = Path(path), Path(out)
    for a, b in ((p, root), (p.resolve(), root.resolve())):
        if a.is_relative_to(b):
            return a.relative_to(b).as_posix()
    return str(p)


def load_state(path: Path) -> dict[str, dict[str, Any]]:
    """``stages.json``: per finished stage its ``config`` hash, ``inputs`` and ``outputs`` fingerprints.

    An unreadable file or one in an older format means nothing is known (every stage runs).
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if isinstance(v, dict) and {"config", "inputs", "outputs"} <= set(v)}


def changed_files(old: dict[str, list[Any]], new: dict[str, list[Any]]) -> list[str]:
    """Paths whose fingerprint differs (added, removed, or another size / content; another time only for a
    file whose content was not hashed)."""
    changed = [k for k in new if k not in old or old[k][0] != new[k][0] or old[k][2] != new[k][2]]
    changed += [k for k in old if k not in new]
    # the time alone counts only for large files, whose content is not hashed
    changed += [k for k in new if k in old and new[k][2] is None and old[k][1] != new[k][1]]
    return sorted(set(changed))
