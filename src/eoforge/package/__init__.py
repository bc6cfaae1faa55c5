"""The model package: the contract between training and everything after it.

A folder (or a zip of it, see :mod:`eoforge.package.archive`) holding ``model.safetensors`` (weights; packages
of earlier versions hold ``model.pt``), ``eoforge.json`` (architecture, bands and their order, normalisation,
nodata, chip size, classes with ids/names/colours, ONNX parity), ``model.onnx`` (see
:mod:`eoforge.package.onnx`), ``item.json`` (a STAC Item with the MLM extension, :mod:`eoforge.package.mlm`),
``config.yaml`` (the resolved run config) and, after evaluation, ``metrics.json``. :func:`load_package`
returns a :class:`Predictor`; ``predict`` and ``evaluate`` need nothing else.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from eoforge import __version__
from eoforge.errors import PackageError
from eoforge.io.atomic import atomic_dir, write_text

log = logging.getLogger(__name__)

META = "eoforge.json"
PRECISIONS = ("fp32", "bf16")
WEIGHTS = "model.safetensors"
LEGACY_WEIGHTS = "model.pt"  # torch.save state dict, written by eoforge < 0.2; still read
ONNX = "model.onnx"
ITEM = "item.json"
_COLOR = re.compile(r"^#[0-9a-fA-F]{6}$")


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: str


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


@dataclass(frozen=True)
class PackageMeta:
    arch: str
    encoder: str
    bands: list[str]
    mean: list[float]
    std: list[float]
    nodata: float | None
    chip_size: int
    classes: list[ClassInfo]
    tile: int
    overlap: int
    # Optional fields below (defaults keep packages of earlier versions loading).
    onnx: OnnxInfo | None = None

    def to_json(self) -> dict[str, Any]:
        out = {
            "eoforge_version": __version__,
            "arch": self.arch,
            "encoder": self.encoder,
            "in_channels": len(self.bands),
            "bands": self.bands,
            "normalization": {"mean": self.mean, "std": self.std},
            "nodata": self.nodata,
            "chip_size": self.chip_size,
            "predict": {"tile": self.tile, "overlap": self.overlap},
            "classes": [
                {"index": i, "id": c.id, "name": c.name, "color": c.color} for i, c in enumerate(self.classes)
            ],
        }
        if self.onnx is not None:
            out["onnx"] = self.onnx.to_json()
        return out

    @classmethod
    def from_json(cls, m: dict[str, Any]) -> PackageMeta:
        meta = cls(
            arch=m["arch"],
            encoder=m["encoder"],
            bands=list(m["bands"]),
            mean=list(m["normalization"]["mean"]),
            std=list(m["normalization"]["std"]),
            nodata=m["nodata"],
            chip_size=int(m["chip_size"]),
            classes=[ClassInfo(int(c["id"]), c["name"], c["color"]) for c in m["classes"]],
            tile=int(m["predict"]["tile"]),
            overlap=int(m["predict"]["overlap"]),
            onnx=OnnxInfo.from_json(m["onnx"]) if m.get("onnx") else None,
        )
        problem = meta.problem()
        if problem:
            raise ValueError(problem)
        return meta

    def problem(self) -> str | None:
        """What is inconsistent in this metadata (one phrase), or None."""
        n = len(self.bands)
        if n == 0:
            return "no bands listed"
        if len(self.mean) != n or len(self.std) != n:
            return f"normalization has {len(self.mean)} means and {len(self.std)} stds for {n} bands"
        if not all(np.isfinite(self.mean)) or not all(np.isfinite(v) and v > 0 for v in self.std):
            return "normalization means must be finite and stds finite and > 0"
        if not self.classes:
            return "no classes listed"
        for c in self.classes:
            if not isinstance(c.color, str) or not _COLOR.match(c.color):
                return f"class '{c.name}' has colour {c.color!r}, not #rrggbb"
        ids = [c.id for c in self.classes]
        if len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) > 65534:
            return "class ids must be unique and within 0..65534"
        if self.tile <= 0 or self.overlap < 0:
            return f"predict tile {self.tile} / overlap {self.overlap} invalid (tile > 0, overlap >= 0)"
        return None


class Predictor:
    """Maps raw float32 band windows ``(N, C, H, W)`` (NaN at nodata) to class probabilities or indices."""

    def __init__(
        self, model: nn.Module, meta: PackageMeta, device: str = "cpu", precision: str = "fp32"
    ) -> None:
        if precision not in PRECISIONS:
            raise PackageError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
        self.meta = meta
        self.device = torch.device(device)
        self.precision = precision
        # channels_last: 1.4x (fp32) to 1.7x (bf16) faster convolutions on CPU (shared/PERF-NOTES.md)
        self.model = model.to(self.device).to(memory_format=torch.channels_last).eval()
        self._mean = torch.tensor(meta.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self._std = torch.tensor(meta.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    @property
    def num_classes(self) -> int:
        return len(self.meta.classes)

    @property
    def class_ids(self) -> list[int]:
        return [c.id for c in self.meta.classes]

    def normalize(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(x, dtype=torch.float32).to(self.device)
        t = (t - self._mean) / self._std
        return torch.nan_to_num(t, nan=0.0)

    @torch.inference_mode()
    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        if x.shape[1] != len(self.meta.bands):
            raise PackageError(
                f"input has {x.shape[1]} bands but the model was trained on {len(self.meta.bands)} "
                f"({', '.join(self.meta.bands)}); give the same bands in the same order"
            )
        t = self.normalize(x).contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out: torch.Tensor = self.model(t)
        return out.float()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return torch.softmax(self.logits(x), dim=1).cpu().numpy()

    def predict_index(self, x: np.ndarray) -> np.ndarray:
        """Class indices ``(N, H, W)`` as uint8 (``max(1).indices`` is ~15x faster than argmax on CPU)."""
        return self.logits(x).max(1).indices.to(torch.uint8).cpu().numpy()


def one_line(exc: BaseException | str, limit: int = 160) -> str:
    """An exception text on one line, cut at a word boundary (never mid-word) when longer than ``limit``."""
    text = " ".join(str(exc).split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " …"


def save_package(
    out: str | Path,
    model: nn.Module,
    meta: PackageMeta,
    config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    onnx: bool = True,
) -> Path:
    """Write a model package folder atomically: safetensors weights, metadata, config, ONNX, STAC MLM item.

    ``onnx=False`` skips the ONNX export (``eoforge export --onnx`` adds it later); a model that cannot be
    exported is packaged without it and the reason is logged.
    """
    from safetensors.torch import save_file

    from eoforge.package.mlm import write_item
    from eoforge.package.onnx import export_onnx

    out = Path(out)
    problem = meta.problem()
    if problem:
        raise PackageError(
            f"{out}: cannot write a package whose metadata is invalid ({problem}); fix the config"
        )
    model = model.cpu().eval()
    with atomic_dir(out) as tmp:
        # clone: safetensors refuses tensors sharing memory (tied or viewed parameters)
        state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": "pt", "eoforge": __version__})
        if onnx:
            try:
                meta = replace_meta(meta, onnx=export_onnx(model, meta, tmp / ONNX))
            except PackageError as exc:
                log.warning("%s", exc)
        (tmp / META).write_text(json.dumps(meta.to_json(), indent=2))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_item(tmp, meta, metrics)
    return out


def replace_meta(meta: PackageMeta, **changes: Any) -> PackageMeta:
    import dataclasses

    return dataclasses.replace(meta, **changes)


def add_metrics(package: str | Path, metrics: dict[str, Any]) -> None:
    """Add evaluation metrics to a package folder (``metrics.json`` and the STAC item's properties)."""
    from eoforge.package.mlm import write_item

    package = Path(package)
    write_text(package / "metrics.json", json.dumps(metrics, indent=2))
    write_item(package, read_meta(package), metrics)


def read_meta(path: str | Path) -> PackageMeta:
    """The metadata of a package folder or zip (one-line :class:`PackageError` naming the fix otherwise)."""
    from eoforge.package.archive import open_package

    with open_package(path) as pkg:
        return pkg.meta()


def load_package(path: str | Path, device: str = "cpu", precision: str = "fp32") -> Predictor:
    """Load a model package folder or zip into a :class:`Predictor`."""
    from eoforge.package.archive import open_package

    with open_package(path) as pkg:
        meta = pkg.meta()
        model = pkg.model(meta)
    return Predictor(model, meta, device=device, precision=precision)
