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
