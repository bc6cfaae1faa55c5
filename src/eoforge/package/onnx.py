"""ONNX export of a package's network (dynamic batch and spatial size) and an ONNX Runtime predictor.

The ONNX graph is the network alone: it takes *normalised* float32 ``(N, C, H, W)`` (H, W multiples of 32)
and returns logits ``(N, K, H, W)``. Normalisation (z-score with the package's mean/std, NaN → 0) is described
in the STAC MLM item and applied by :class:`OnnxPredictor` exactly as :class:`eoforge.package.Predictor` does.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from eoforge.errors import PackageError
from eoforge.io.atomic import atomic_path, write_text
from eoforge.normalise import normalize_array
from eoforge.package import META, ONNX, OnnxInfo, PackageMeta
from eoforge.package.fields import one_line

log = logging.getLogger(__name__)

OPSET = 17
PARITY_SHAPE = (2, 64, 96)  # batch, height, width of the random parity inputs (not the export's dummy shape)
PARITY_TOLERANCE = 1e-3  # above this the export is refused: ONNX and torch would give different maps


def _to_bytes(model: nn.Module, in_channels: int) -> bytes:
    dummy = torch.zeros(1, in_channels, 64, 64)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter (dynamo=False): handles smp models with dynamic H/W in seconds and
        # needs no onnxscript graph rewriting; the dynamo exporter is far slower on CPU for the same graph.
        torch.onnx.export(
            model,
            (dummy,),
            buf,  # type: ignore[arg-type]
            input_names=["image"],
            output_names=["logits"],
            dynamic_axes={
                "image": {0: "batch", 2: "height", 3: "width"},
                "logits": {0: "batch", 2: "height", 3: "width"},
            },
            opset_version=OPSET,
            dynamo=False,
        )
    return buf.getvalue()


def _session(data: bytes | str, threads: int | None = None) -> object:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def parity(model: nn.Module, onnx_bytes: bytes, in_channels: int, seed: int = 0) -> float:
    """Max absolute difference of the logits of torch and ONNX Runtime on random normalised inputs."""
    g = torch.Generator().manual_seed(seed)
    n, h, w = PARITY_SHAPE
    x = torch.randn(n, in_channels, h, w, generator=g)
    with torch.inference_mode():
        ref = model.eval()(x).float().numpy()
    sess = _session(onnx_bytes)
    got = sess.run(None, {"image": x.numpy()})[0]  # type: ignore[attr-defined]
    if got.shape != ref.shape:
        raise PackageError(f"ONNX output shape {got.shape} differs from torch {ref.shape}")
    return float(np.max(np.abs(got - ref)))


def export_onnx(model: nn.Module, meta: PackageMeta, out: str | Path) -> OnnxInfo:
    """Export ``model`` to ``out`` (atomically) and check parity; a model that cannot be exported refuses."""
    out = Path(out)
    model = model.cpu().eval()
    try:
        data = _to_bytes(model, len(meta.bands))
    except Exception as exc:  # the exporter raises many types (tracing, unsupported op, symbolic errors)
        raise PackageError(
            f"model {meta.arch}/{meta.encoder} cannot be exported to ONNX ({one_line(exc, 90)}); "
            "use the package's safetensors weights with the torch backend instead"
        ) from None
    try:
        diff = parity(model, data, len(meta.bands))
    except PackageError:
        raise
    except Exception as exc:  # e.g. a graph traced to a constant that no longer takes the input
        raise PackageError(
            f"model {meta.arch}/{meta.encoder} cannot be exported to ONNX (the exported graph fails: "
            f"{one_line(exc, 70)}); use the package's safetensors weights with the torch backend instead"
        ) from None
    if not diff <= PARITY_TOLERANCE:
        raise PackageError(
            f"model {meta.arch}/{meta.encoder}: ONNX logits differ from torch by {diff:.2g} (> "
            f"{PARITY_TOLERANCE:g}); not exported, use the torch backend"
        )
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    n, h, w = PARITY_SHAPE
    log.debug("exported %s (opset %d), max |onnx - torch| = %.2g", out.name, OPSET, diff)
    return OnnxInfo(file=out.name, opset=OPSET, max_abs_diff=diff, parity_inputs=[n, len(meta.bands), h, w])


def add_onnx(package: str | Path) -> PackageMeta:
    """Export the ONNX file of a package folder and record it (and its parity) in the package metadata."""
    from eoforge.package.archive import open_package

    package = Path(package)
    with open_package(package) as pkg:
        meta = pkg.meta()
        model = pkg.model(meta)
    if not package.is_dir():
        raise PackageError(f"{package}: export needs a package folder, not a zip; unzip it first")
    info = export_onnx(model, meta, package / ONNX)
    meta = dataclasses.replace(meta, onnx=info)
    write_text(package / META, json.dumps(meta.to_json(), indent=2))
    return meta


class OnnxPredictor:
    """ONNX Runtime backend with the methods of :class:`eoforge.package.Predictor` (CPU execution)."""

    def __init__(self, onnx_path: str | Path | bytes, meta: PackageMeta, threads: int | None = None) -> None:
        self.meta = meta
        self.device = torch.device("cpu")
        self.precision = "fp32"
        data = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
        if not isinstance(onnx_path, bytes) and not Path(onnx_path).is_file():
            raise PackageError(
                f"{onnx_path}: no ONNX file in the model package; run eoforge export MODEL --onnx first"
            )
        try:
            self._session = _session(data, threads)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise PackageError(
                f"{onnx_path if isinstance(onnx_path, (str, Path)) else 'model.onnx'}: ONNX Runtime cannot load "
                f"it ({one_line(exc, 80)}); re-export with eoforge export MODEL --onnx"
            ) from None
        self._mean = np.asarray(meta.mean, dtype=np.float32)
        self._std = np.asarray(meta.std, dtype=np.float32)

    @classmethod
    def from_package(cls, path: str | Path, threads: int | None = None) -> OnnxPredictor:
        """Open the ONNX file of a package folder or zip."""
        from eoforge.package.archive import open_package

        with open_package(path) as pkg:
            meta = pkg.meta()
            if meta.onnx is None or not pkg.has(meta.onnx.file):
                raise PackageError(
                    f"{path}: the package has no ONNX export; run eoforge export {path} --onnx first"
                )
            return cls(pkg.read(meta.onnx.file), meta, threads)

    @property
    def num_classes(self) -> int:
        return len(self.meta.classes)

    @property
    def class_ids(self) -> list[int]:
        return [c.id for c in self.meta.classes]

    def normalize(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        a = np.asarray(x, dtype=np.float32)
        return torch.from_numpy(normalize_array(a, self._mean, self._std, self.meta.clamp))

    def logits(self, x: np.ndarray | torch.Tensor) -> torch.Tensor:
        if x.shape[1] != len(self.meta.bands):
            raise PackageError(
                f"input has {x.shape[1]} bands but the model was trained on {len(self.meta.bands)} "
                f"({', '.join(self.meta.bands)}); give the same bands in the same order"
            )
        t = self.normalize(x).numpy()
        out = self._session.run(None, {"image": t})[0]  # type: ignore[attr-defined]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return torch.softmax(self.logits(x), dim=1).numpy()

    def predict_index(self, x: np.ndarray) -> np.ndarray:
        return self.logits(x).max(1).indices.to(torch.uint8).numpy()
