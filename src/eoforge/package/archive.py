"""A model package read from its folder or from a zip of it, and ``eoforge package`` writing that zip.

Members of a zip are read in memory (weights, ONNX, metadata are small next to the scenes), so a zip is never
extracted to disk. Every fault of a package (not a package, truncated zip, random bytes in the weights, metadata
that does not fit, unknown architecture) becomes one :class:`PackageError` line naming the package and the fix.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path
from types import TracebackType

import torch
from torch import nn

from eoforge.errors import EoforgeError, PackageError
from eoforge.io.atomic import atomic_path
from eoforge.models import create_model
from eoforge.package import (
    LEGACY_WEIGHTS,
    META,
    WEIGHTS,
    PackageMeta,
    read_meta,
)
from eoforge.package.fields import meta_problem, one_line

log = logging.getLogger(__name__)

_RETRAIN = "re-run training (eoforge train) or re-package the run (eoforge package RUN_DIR)"


class PackageFiles:
    """Read-only access to the members of a package folder or zip."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._zip: zipfile.ZipFile | None = None
        if self.path.is_dir():
            return
        if not self.path.exists():
            raise PackageError(
                f"{self.path}: model package not found; give the model/ folder of a run or a model zip"
            )
        try:
            self._zip = zipfile.ZipFile(self.path)
            bad = self._zip.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise PackageError(
                f"{self.path}: not a readable model zip ({one_line(exc, 80)}); the file is truncated or not a "
                "package: copy it again or re-create it with eoforge package"
            ) from None
        if bad is not None:
            raise PackageError(
                f"{self.path}: member {bad} of the model zip is corrupt (CRC mismatch); copy the zip again "
                "or re-create it with eoforge package"
            )

    def __enter__(self) -> PackageFiles:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def has(self, name: str) -> bool:
        if self._zip is None:
            return (self.path / name).is_file()
        return name in self._zip.namelist()

    def read(self, name: str) -> bytes:
        if not self.has(name):
            raise PackageError(f"{self.path}: no {name} in the model package; {_RETRAIN}")
        try:
            if self._zip is None:
                return (self.path / name).read_bytes()
            return self._zip.read(name)
        except (OSError, zipfile.BadZipFile, EOFError) as exc:
            raise PackageError(f"{self.path}: cannot read {name} ({one_line(exc, 80)}); {_RETRAIN}") from None

    def meta(self) -> PackageMeta:
        if not self.has(META):
            raise PackageError(
                f"{self.path}: not a model package (no {META}); give the model/ folder written by training "
                "or a zip written by eoforge package"
            )
        try:
            meta = PackageMeta.from_json(json.loads(self.read(META)))
            problem = meta_problem(meta)
        except (KeyError, ValueError, TypeError, AttributeError) as exc:
            problem = one_line(exc, 100)
        if problem:
            raise PackageError(f"{self.path}: malformed package metadata {META} ({problem}); {_RETRAIN}")
        return meta

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights: ``model.safetensors``, or ``model.pt`` in packages of earlier versions."""
        if self.has(WEIGHTS):
            from safetensors.torch import load

            try:
                return load(self.read(WEIGHTS))
            except Exception as exc:  # safetensors raises its own error types, not one base class
                raise PackageError(
                    f"{self.path}: {WEIGHTS} is not a readable safetensors file ({one_line(exc, 60)}); "
                    f"{_RETRAIN}"
                ) from None
        if self.has(LEGACY_WEIGHTS):
            try:
                state = torch.load(
                    io.BytesIO(self.read(LEGACY_WEIGHTS)), map_location="cpu", weights_only=True
                )
            except Exception as exc:  # torch.load raises many types (pickle, zip, runtime) on bad bytes
                raise PackageError(
                    f"{self.path}: {LEGACY_WEIGHTS} is not a readable state dict ({one_line(exc, 60)}); "
                    f"{_RETRAIN}"
                ) from None
            if not isinstance(state, dict):
                raise PackageError(f"{self.path}: {LEGACY_WEIGHTS} holds no state dict; {_RETRAIN}")
            return state
        raise PackageError(f"{self.path}: no weights ({WEIGHTS}) in the model package; {_RETRAIN}")

    def model(self, meta: PackageMeta) -> nn.Module:
        """Rebuild the network from the registry and load its weights (strictly: every tensor must fit)."""
        try:
            model = create_model(
                meta.arch, len(meta.bands), len(meta.classes), meta.encoder, encoder_depth=meta.encoder_depth
            )
        except EoforgeError as exc:
            raise PackageError(
                f"{self.path}: the package's model cannot be built ({one_line(exc, 110)}); "
                "use the eoforge version (or plugin) that trained it"
            ) from None
        state = self.state_dict()
        try:
            model.load_state_dict(state)
        except (RuntimeError, KeyError) as exc:
            raise PackageError(
                f"{self.path}: weights do not fit {meta.arch}/{meta.encoder} ({one_line(exc, 80)}); {_RETRAIN}"
            ) from None
        return model


def open_package(path: str | Path) -> PackageFiles:
    return PackageFiles(path)


def write_zip(package: str | Path, out: str | Path) -> Path:
    """Zip a package folder (checked by loading it first) into ``out``, atomically."""
    package, out = Path(package), Path(out)
    if not package.is_dir():
        raise PackageError(f"{package}: not a package folder; give a run folder or its model/ folder")
    with open_package(package) as pkg:
        pkg.model(pkg.meta())
    if out.resolve().is_relative_to(package.resolve()):
        raise PackageError(f"{out}: the zip cannot be written inside the package folder; choose another path")
    if out.is_dir():
        raise PackageError(f"{out}: is a folder; give a file name such as model.zip")
    names = sorted(p for p in package.iterdir() if p.is_file() and not p.name.startswith("."))
    with atomic_path(out) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for p in names:
            # weights and graphs are float data deflate barely shrinks (~7 %) at a high CPU cost: store them
            stored = p.suffix in {".safetensors", ".onnx", ".pt"}
            zf.write(p, arcname=p.name, compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    log.info("packaged %s (%d files) into %s", package, len(names), out)
    return out


def package_run(run_dir: str | Path, out: str | Path, onnx: bool = True) -> Path:
    """``eoforge package RUN_DIR -o model.zip``: complete the package (ONNX, STAC item) and zip it."""
    from eoforge.package.mlm import write_item
    from eoforge.package.onnx import add_onnx

    run_dir = Path(run_dir)
    package = run_dir / "model" if (run_dir / "model" / META).is_file() else run_dir
    meta = read_meta(package)
    if onnx and meta.onnx is None:
        meta = add_onnx(package)
    metrics_path = package / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else None
    write_item(package, meta, metrics)  # always rewritten: it lists the files and metrics present now
    return write_zip(package, out)
