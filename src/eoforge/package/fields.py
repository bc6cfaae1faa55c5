"""Optional package metadata (the ONNX export record) and the consistency checks of ``eoforge.json``.

Kept apart from :mod:`eoforge.package` so the core dataclasses stay small; nothing here imports torch.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from eoforge.package import PackageMeta

_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class OnnxInfo:
    """The ONNX export beside the weights: file name, opset and the parity check against torch."""

    file: str
    opset: int
    max_abs_diff: float
    parity_inputs: list[int] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "opset": self.opset,
            "parity": {"max_abs_diff": self.max_abs_diff, "input_shape": self.parity_inputs},
        }

    @classmethod
    def from_json(cls, m: dict[str, Any]) -> OnnxInfo:
        return cls(
            file=str(m["file"]),
            opset=int(m["opset"]),
            max_abs_diff=float(m["parity"]["max_abs_diff"]),
            parity_inputs=[int(v) for v in m["parity"].get("input_shape", [])],
        )


def meta_problem(meta: PackageMeta) -> str | None:
    """What is inconsistent in package metadata (one phrase), or None."""
    from eoforge.tasks import TASKS

    if meta.task not in TASKS:
        return f"task '{meta.task}' is not one of {', '.join(TASKS)}"
    n = len(meta.bands)
    if n == 0:
        return "no bands listed"
    if len(meta.mean) != n or len(meta.std) != n:
        return f"normalization has {len(meta.mean)} means and {len(meta.std)} stds for {n} bands"
    if not all(math.isfinite(v) for v in meta.mean) or not all(math.isfinite(v) and v > 0 for v in meta.std):
        return "normalization means must be finite and stds finite and > 0"
    if not meta.classes:
        return "no classes listed"
    for c in meta.classes:
        if not isinstance(c.color, str) or not _COLOR.match(c.color):
            return f"class '{c.name}' has colour {c.color!r}, not #rrggbb"
    ids = [c.id for c in meta.classes]
    if len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) > 65534:
        return "class ids must be unique and within 0..65534"
    if meta.tile <= 0 or meta.overlap < 0:
        return f"predict tile {meta.tile} / overlap {meta.overlap} invalid (tile > 0, overlap >= 0)"
    return None


def one_line(exc: BaseException | str, limit: int = 160) -> str:
    """An exception text on one line, cut at a word boundary (never mid-word) when longer than ``limit``."""
    text = " ".join(str(exc).split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " …"
