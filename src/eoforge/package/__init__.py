"""The model package: the contract between training and everything after it.

A folder holding ``model.pt`` (weights), ``eoforge.json`` (architecture, bands and their order, normalisation,
nodata, chip size, classes with ids/names/colours), ``config.yaml`` (the resolved run config) and, after
evaluation, ``metrics.json``. :func:`load_package` returns a :class:`Predictor`; ``predict`` and ``evaluate``
need nothing else.

Since issue 10 the weights are ``model.safetensors`` (``model.pt`` of earlier packages is still read), the folder
also holds ``model.onnx`` (:mod:`eoforge.package.onnx`) and ``item.json`` (STAC MLM item,
:mod:`eoforge.package.mlm`), and a zip of the folder works everywhere a folder does
(:mod:`eoforge.package.archive`).
"""

from __future__ import annotations

import dataclasses
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
from eoforge.models.registry import channels_last_ok
from eoforge.normalise import clamps, normalize_tensor
from eoforge.package.fields import OnnxInfo, meta_problem

log = logging.getLogger(__name__)

META = "eoforge.json"
PRECISIONS = ("fp32", "bf16", "fp16")
WEIGHTS = "model.safetensors"
LEGACY_WEIGHTS = "model.pt"  # torch.save state dict, written by eoforge 0.1; still read
ONNX = "model.onnx"
ITEM = "item.json"


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
    nodata: float | list[float | None] | None
    chip_size: int
    classes: list[ClassInfo]
    tile: int
    overlap: int
    onnx: OnnxInfo | None = None  # optional fields (with defaults) keep earlier packages loading
    nodata_rule: str = "all"
    band_descriptions: list[str] | None = None
    recipe: dict[str, Any] | None = None  # eoforge.prepare.recipe.Recipe.to_json(); None in older packages
    task: str = "segmentation"  # eoforge.tasks name; older packages were all segmentation
    encoder_depth: int | None = None  # model.encoder_depth; None: the architecture's own (all older packages)
    # how the evaluated map was predicted, so that `eoforge predict MODEL` makes that map by default
    tta: str = "none"
    blend: str = "center"

    @property
    def source_band_names(self) -> list[str]:
        """Names the input files must carry (when they carry any): their descriptions at training, else the
        recipe's raw bands (channels without indices), else bands."""
        if self.band_descriptions:
            return self.band_descriptions
        return list(self.recipe["bands"]) if self.recipe else self.bands

    @property
    def clamp(self) -> bool:
        """Normalised inputs are clipped to [0, 1] (the recipe's ``normalize: percentile``)."""
        return clamps(self.recipe)

    def to_json(self) -> dict[str, Any]:
        return {
            "eoforge_version": __version__,
            "task": self.task,
            "arch": self.arch,
            "encoder": self.encoder,
            **({"encoder_depth": self.encoder_depth} if self.encoder_depth is not None else {}),
            "in_channels": len(self.bands),
            "bands": self.bands,
            "normalization": {"mean": self.mean, "std": self.std},
            "nodata": self.nodata,
            "nodata_rule": self.nodata_rule,
            "band_descriptions": self.band_descriptions,
            "recipe": self.recipe,
            "chip_size": self.chip_size,
            "predict": {"tile": self.tile, "overlap": self.overlap, "tta": self.tta, "blend": self.blend},
            "classes": [
                {"index": i, "id": c.id, "name": c.name, "color": c.color} for i, c in enumerate(self.classes)
            ],
            **({"onnx": self.onnx.to_json()} if self.onnx is not None else {}),
        }

    @classmethod
    def from_json(cls, m: dict[str, Any]) -> PackageMeta:
        return cls(
            arch=m["arch"],
            encoder=m["encoder"],
            encoder_depth=m.get("encoder_depth"),
            bands=list(m["bands"]),
            mean=list(m["normalization"]["mean"]),
            std=list(m["normalization"]["std"]),
            nodata=m["nodata"],
            chip_size=int(m["chip_size"]),
            classes=[ClassInfo(int(c["id"]), c["name"], c["color"]) for c in m["classes"]],
            tile=int(m["predict"]["tile"]),
            overlap=int(m["predict"]["overlap"]),
            onnx=OnnxInfo.from_json(m["onnx"]) if m.get("onnx") else None,
            nodata_rule=m.get("nodata_rule", "any"),  # packages written before the rule existed used 'any'
            band_descriptions=m.get("band_descriptions"),
            recipe=m.get("recipe"),
            task=m.get("task", "segmentation"),
            tta=m["predict"].get("tta", "none"),  # packages before 2026-11-23 did not record them
            blend=m["predict"].get("blend", "center"),
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
        self.channels_last = channels_last and channels_last_ok(model)
        self.backend = backend
        self.spec: Any = None  # how to load this predictor again (set by eoforge.predict.backends)
        # channels_last: 1.4x (fp32) to 1.7x (bf16) faster convolutions on CPU (shared/PERF-NOTES.md)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
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
        return normalize_tensor(t, self._mean, self._std, self.meta.clamp)

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
    problem = meta_problem(meta)
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
                meta = dataclasses.replace(meta, onnx=export_onnx(model, meta, tmp / ONNX))
            except PackageError as exc:
                log.warning("%s", exc)
        (tmp / META).write_text(json.dumps(meta.to_json(), indent=2))
        (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        if metrics is not None:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        write_item(tmp, meta, metrics)
    return out


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


def load_package(
    path: str | Path,
    device: str = "cpu",
    precision: str = "fp32",
    channels_last: bool = True,
    backend: str = "torch",
) -> Predictor:
    """Load a model package folder or zip into a :class:`Predictor`."""
    from eoforge.package.archive import open_package

    with open_package(path) as pkg:
        meta = pkg.meta()
        model = pkg.model(meta)
    return Predictor(
        model, meta, device=device, precision=precision, channels_last=channels_last, backend=backend
    )
