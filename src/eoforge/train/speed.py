"""Speed settings: the precision ``auto`` picks, and whether to use channels-last memory."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeedPlan:
    precision: str
    channels_last: bool


@functools.cache
def cpu_has_bf16() -> bool:
    """True when oneDNN runs bf16 natively on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def uses_cuda(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str) -> SpeedPlan:
    """``auto``: 16-mixed on CUDA, bf16-mixed + channels-last on CPUs with bf16, else 32-true."""
    cuda = uses_cuda(accelerator)
    if precision == "auto":
        if cuda:
            precision = "16-mixed"
        elif cpu_has_bf16():
            precision = "bf16-mixed"
        else:
            precision = "32-true"
    # channels-last pays off for bf16 on CPU (oneDNN) and for mixed precision on CUDA (tensor cores)
    plan = SpeedPlan(precision, channels_last=precision != "32-true")
    log.debug("precision %s, channels-last %s", plan.precision, plan.channels_last)
    return plan
