"""Inference backends: which engine runs the model, chosen by name (``predict.backend``).

- ``torch-fp32``: plain fp32 eager torch, contiguous memory: the reference the others are compared with;
- ``torch``: channels-last memory, bf16 autocast where the CPU supports bf16 (AVX512-BF16/AMX), CUDA automatic
  mixed precision (bf16, else fp16) on a GPU;
- ``onnx``: ONNX Runtime on the package's ``model.onnx`` (:class:`eoforge.package.onnx.OnnxPredictor`);
- ``auto`` (default): ``torch`` when its class map agrees with ``torch-fp32`` on four windows spread over the
  scene (at least 99.5 % of their valid pixels), else ``torch`` in fp32 with channels-last.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np
import torch

from eoforge.errors import InputError, PackageError
from eoforge.models.registry import channels_last_ok
from eoforge.package import Predictor, load_package

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "torch-fp32", "onnx")
AGREEMENT = 0.995


def check_device(device: str) -> torch.device:
    """The torch device named ``device``, or a one-line :class:`InputError` when it does not exist here."""
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise InputError(f"device '{device}': not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device '{device}': no CUDA GPU on this machine; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(
                f"device '{device}': this machine has {torch.cuda.device_count()} GPU(s); use cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1}"
            )
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"device '{device}': MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise InputError(f"device '{device}': unsupported device type; use cpu, cuda or cuda:N")
    return dev


def fast_precision(dev: torch.device) -> str:
    """The reduced precision worth using on ``dev``: bf16 on CPUs with bf16 support, bf16/fp16 AMP on CUDA."""
    if dev.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if dev.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "bf16"
    return "fp32"


def precision_backend(precision: str) -> str:
    """The backend of the older ``precision`` argument: ``fp32`` -> ``torch-fp32``, ``bf16`` -> ``torch``."""
    if precision == "fp32":
        return "torch-fp32"
    if precision == "bf16":
        return "torch"
    raise PackageError(f"unknown precision '{precision}'; choose one of: fp32, bf16")


def agreement(a: Predictor, b: Predictor, probe: np.ndarray | None = None) -> float:
    """Fraction of valid pixels where ``a`` and ``b`` give the same class on ``probe`` ``(N, C, H, W)``
    (default: a fixed random batch drawn from the package's band statistics)."""
    meta = a.meta
    if probe is None:
        rng = np.random.default_rng(0)
        probe = rng.standard_normal((2, len(meta.bands), 64, 64)).astype(np.float32)
        probe = probe * np.asarray(meta.std, np.float32)[:, None, None]
        probe = probe + np.asarray(meta.mean, np.float32)[:, None, None]
    valid = ~np.isnan(probe).all(axis=1)
    same = a.predict_index(probe) == b.predict_index(probe)
    return float(same[valid].mean()) if valid.any() else 1.0


def load_predictor(
    model_dir: str | Path, backend: str = "auto", device: str = "cpu", probe: np.ndarray | None = None
) -> Predictor:
    """Load the package ``model_dir`` with ``backend`` on ``device``.

    ``auto`` compares its class map with fp32 on ``probe`` (windows of the scene to predict, ``(N, C, H, W)``
    with sides multiple of 32; :func:`eoforge.predict.engine.predict` passes four spread over the scene).
    """
    from eoforge.predict.engine import PredictorSpec

    if backend not in BACKENDS:
        raise InputError(f"backend '{backend}': unknown; choose one of: {', '.join(BACKENDS)}")
    dev = check_device(device)
    pred: Predictor
    if backend == "onnx":
        pred = _onnx(Path(model_dir))
    elif backend == "torch-fp32":
        pred = load_package(model_dir, device=device, precision="fp32", channels_last=False, backend=backend)
    else:
        prec = fast_precision(dev)
        pred = load_package(model_dir, device=device, precision=prec, channels_last=True, backend="torch")
        if backend == "auto" and prec != "fp32":
            # the fp32 reference from the same weights, without reading and building the package again
            ref = Predictor(copy.deepcopy(pred.model), pred.meta, device=device, channels_last=False)
            agree = agreement(pred, ref, probe)
            if agree < AGREEMENT:
                log.warning(
                    "backend auto: %s agrees with fp32 on %.2f %% of probed pixels (< %.1f %%); using fp32",
                    prec,
                    100 * agree,
                    100 * AGREEMENT,
                )
                pred = ref
                if channels_last_ok(pred.model):
                    pred.channels_last = True
                    pred.model = pred.model.to(memory_format=torch.channels_last)
            else:
                log.debug(
                    "backend auto: %s + channels-last (agrees with fp32 on %.2f %% of probed pixels)",
                    prec,
                    100 * agree,
                )
        pred.backend = f"torch-{pred.precision}"
    spec = PredictorSpec(str(Path(model_dir).resolve()), backend, device)
    try:  # the ONNX predictor is another module's class: tag it where it allows attributes
        pred.spec = spec
        if backend == "onnx":
            pred.backend = "onnx"
    except AttributeError:
        log.debug("%s does not take attributes; Dask row bands need spec", type(pred).__name__)
    return pred


def _onnx(model_dir: Path) -> Predictor:
    """ONNX Runtime predictor of the package folder or zip (its `model.onnx`, parity-checked at export)."""
    from eoforge.package.onnx import OnnxPredictor

    # OnnxPredictor has Predictor's interface (meta, class_ids, logits, predict_proba, predict_index)
    return OnnxPredictor.from_package(model_dir)  # type: ignore[return-value]
