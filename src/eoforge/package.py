"""The model package: the contract between training and everything after it.

A folder holding ``model.pt`` (weights), ``eoforge.json`` (architecture, bands and their order, normalisation,
nodata, chip size, classes with ids/names/colours), ``config.yaml`` (the resolved run config) and, after
evaluation, ``metrics.json``. :func:`load_package` returns a :class:`Predictor`; ``predict`` and ``evaluate``
need nothing else.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from eoforge import __version__
from eoforge.errors import PackageError
from eoforge.io.atomic import atomic_dir, write_text
from eoforge.models import create_model

log = logging.getLogger(__name__)

META = "eoforge.json"
PRECISIONS = ("fp32", "bf16", "fp16")
WEIGHTS = "model.pt"


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: str


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

    def to_json(self) -> dict[str, Any]:
        return {
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

    @classmethod
    def from_json(cls, m: dict[str, Any]) -> PackageMeta:
        return cls(
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
        )


class Predictor:
    """Maps raw float32 band windows ``(N, C, H, W)`` (NaN at nodata) to class probabilities or indices."""

    def __init__(
        self,
        model: nn.Module,
        meta: PackageMeta,
        device: str = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
        backend: str = "torch",
    ) -> None:
        if precision not in PRECISIONS:
            raise PackageError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
        self.meta = meta
        self.device = torch.device(device)
        self.precision = precision
        self.channels_last = channels_last
        self.backend = backend
        self.spec: Any = None  # how to load this predictor again (set by eoforge.predict.backends)
        # channels_last: 1.4x (fp32) to 1.7x (bf16) faster convolutions on CPU (shared/PERF-NOTES.md)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(self.device).to(memory_format=fmt).eval()
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
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        t = self.normalize(x).contiguous(memory_format=fmt)
        amp = torch.float16 if self.precision == "fp16" else torch.bfloat16
        with torch.autocast(self.device.type, dtype=amp, enabled=self.precision != "fp32"):
            out: torch.Tensor = self.model(t)
        return out.float()

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return torch.softmax(self.logits(x), dim=1).cpu().numpy()

    def predict_index(self, x: np.ndarray) -> np.ndarray:
        """Class indices ``(N, H, W)`` as uint8 (``max(1).indices`` is ~15x faster than argmax on CPU)."""
        return self.logits(x).max(1).indices.to(torch.uint8).cpu().numpy()


def save_package(
    out: str | Path,
    model: nn.Module,
    meta: PackageMeta,
    config: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write a model package folder atomically."""
    out = Path(out)
    with atomic_dir(out) as tmp:
        torch.save(model.state_dict(), tmp / WEIGHTS)
        (tmp / META).write_text(json.dumps(meta.to_json(), indent=2))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return out


def add_metrics(package: str | Path, metrics: dict[str, Any]) -> None:
    write_text(Path(package) / "metrics.json", json.dumps(metrics, indent=2))


def read_meta(path: str | Path) -> PackageMeta:
    path = Path(path)
    meta_path = path / META
    if not path.is_dir() or not meta_path.is_file():
        raise PackageError(
            f"{path}: not a model package (no {META}); give the model/ folder written by training"
        )
    try:
        return PackageMeta.from_json(json.loads(meta_path.read_text()))
    except (KeyError, ValueError, TypeError) as exc:
        raise PackageError(f"{meta_path}: malformed package metadata ({exc}); re-run training") from None


def load_package(
    path: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = True,
    backend: str = "torch",
) -> Predictor:
    """Load a model package folder into a :class:`Predictor`."""
    path = Path(path)
    meta = read_meta(path)
    weights = path / WEIGHTS
    if not weights.is_file():
        raise PackageError(f"{path}: no {WEIGHTS} in the model package; re-run training")
    model = create_model(meta.arch, len(meta.bands), len(meta.classes), meta.encoder)
    try:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError) as exc:
        raise PackageError(
            f"{weights}: weights do not fit {meta.arch}/{meta.encoder} ({str(exc)[:120]})"
        ) from None
    return Predictor(
        model, meta, device=device, precision=precision, channels_last=channels_last, backend=backend
    )
