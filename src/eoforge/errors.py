"""One exception root for eoforge.

Every error a user can cause or fix is an :class:`EoforgeError`. Its message names the file, the problem and
the fix, in one line; the CLI prints that line and exits with code 2. Subclasses also inherit the matching
builtin so callers can catch ``ValueError`` / ``OSError`` as usual (the rasterio ``errors.py`` pattern).
"""

from __future__ import annotations


class EoforgeError(Exception):
    """Root of every error eoforge raises on purpose."""


class InputError(EoforgeError, ValueError):
    """Bad user input: a config value, a missing file, labels that do not fit the image."""


class DataError(EoforgeError, OSError):
    """Data that cannot be read or is inconsistent (unreadable raster, mismatching grids)."""


class PackageError(EoforgeError, ValueError):
    """A model package that is incomplete or does not fit the data it is applied to."""


# errno -> what the user can do about it (output side: folders, disks, file names)
_FIXES = {
    "EACCES": "fix the permissions of the file or its folder, or choose another path",
    "EPERM": "fix the permissions of the file or its folder, or choose another path",
    "ENOENT": "check the path (a folder on it may be missing)",
    "EROFS": "the file system is read-only; choose an output path on a writable disk",
    "ENOSPC": "the disk is full; free some space or choose an output path on another disk",
    "EDQUOT": "the disk quota is exceeded; free some space or choose an output path on another disk",
    "EFBIG": "the file is too large for this file system; choose an output path on another disk",
    "EISDIR": "it is a folder; give a file name instead (e.g. FOLDER/map.tif)",
    "ENOTDIR": "a part of the path is a file, not a folder; choose another output path",
    "EEXIST": "something is already there; remove it or choose another output path",
    "ENOTEMPTY": "a non-empty folder is in the way; remove it or choose another output path",
    "ENAMETOOLONG": "the path is too long; choose a shorter output path",
    "EMFILE": "too many open files; raise the limit (ulimit -n) and run again",
}


def os_error_line(exc: OSError, path: object | None = None) -> str:
    """One line for an ``OSError``: the path, what went wrong and the fix (``path`` defaults to the error's)."""
    import errno
    import os

    name = errno.errorcode.get(exc.errno or 0, "")
    where = path if path is not None else (exc.filename or "output")
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else str(exc)) or type(exc).__name__
    fix = _FIXES.get(name, "check the path and the disk, then run again")
    return f"{where}: {reason.rstrip('.')}; {fix}".replace("\n", " ")


def output_error(exc: OSError, path: object | None = None) -> DataError:
    """Wrap an ``OSError`` raised while writing an output into a :class:`DataError` with :func:`os_error_line`."""
    err = DataError(os_error_line(exc, path))
    err.errno = exc.errno
    return err
