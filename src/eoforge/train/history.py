"""The training log ``OUT/train/metrics.csv`` across resumes.

Lightning's CSV logger deletes an existing ``metrics.csv`` when it starts writing (its ``_ExperimentWriter``
warns "Previous log files in this directory will be deleted"), so a resumed run would keep only the epochs
it trained itself, and the report's training curves would start mid-run. Before a resumed fit the rows of
the epochs that ``last.ckpt`` holds are kept in ``metrics.before.csv`` (written atomically, so a run killed
again keeps them too); after the fit they are put back in front of the new rows.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from eoforge.io.atomic import write_text

LOG = "metrics.csv"
BEFORE = "metrics.before.csv"


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV log (none when the file is missing), without empty cells."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: v for k, v in row.items() if k and v not in ("", None)} for row in csv.DictReader(f)]


def _write_rows(path: Path, rows: list[dict[str, str]]) -> None:
    keys = sorted({k for row in rows for k in row})  # Lightning's order: epoch, step, then the metrics
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buf.getvalue())


def _unique(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    seen: set[tuple[tuple[str, str], ...]] = set()
    out = []
    for row in rows:
        key = tuple(sorted(row.items()))
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


def _epoch(row: dict[str, str]) -> int:
    try:
        return int(float(row.get("epoch", "")))
    except ValueError:
        return -1


def keep_before_resume(folder: Path, last_epoch: int) -> int:
    """Save the logged rows of epochs ``<= last_epoch`` (the epoch of ``last.ckpt``) to ``metrics.before.csv``,
    from an earlier kept file and the current log alike; rows of a later, unfinished epoch are dropped (the
    resumed run logs that epoch again). Returns the number of rows kept."""
    rows = read_rows(folder / BEFORE) + read_rows(folder / LOG)
    kept = _unique([r for r in rows if 0 <= _epoch(r) <= last_epoch])
    _write_rows(folder / BEFORE, kept)
    return len(kept)


def merge_after_resume(folder: Path) -> None:
    """Put the kept rows back in front of the resumed run's rows in ``metrics.csv``; drop the kept file."""
    before = folder / BEFORE
    if not before.is_file():
        return
    kept = read_rows(before)
    last = max((_epoch(r) for r in kept), default=-1)
    new = [r for r in read_rows(folder / LOG) if _epoch(r) > last]
    _write_rows(folder / LOG, kept + new)
    before.unlink()
