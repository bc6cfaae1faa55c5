"""The model registry: ``register_model`` / ``create_model`` / ``list_models`` (after timm).

A factory is ``factory(in_channels, num_classes, encoder) -> nn.Module``; every model maps ``(N, C, H, W)``
float tensors to ``(N, K, H, W)`` logits. Other packages (pixel, temporal models) register theirs here too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from eoforge.errors import InputError

log = logging.getLogger(__name__)

ModelFactory = Callable[[int, int, str], nn.Module]
DepthFactory = Callable[[int, int, str, int], nn.Module]  # ... plus the encoder depth (model.encoder_depth)
_REGISTRY: dict[str, ModelFactory] = {}
_DEPTH: dict[str, DepthFactory] = {}
_ENCODERS: dict[str, Callable[[], list[str]]] = {}


def register_model(
    name: str, encoders: Callable[[], list[str]] | None = None, with_depth: DepthFactory | None = None
) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory(in_channels, num_classes, encoder)`` under ``name``.

    ``encoders`` optionally lists the encoder names the model accepts (shown by ``eoforge models``);
    ``with_depth(in_channels, num_classes, encoder, encoder_depth)`` builds it with fewer encoder stages.
    """

    def deco(fn: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = fn
        if encoders is not None:
            _ENCODERS[name] = encoders
        if with_depth is not None:
            _DEPTH[name] = with_depth
        return fn

    return deco


def list_models() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def list_encoders(name: str) -> list[str]:
    """Encoder names a registered model accepts (empty when it takes none or does not say)."""
    _load_builtin()
    fn = _ENCODERS.get(name)
    return fn() if fn is not None else []


def create_model(
    name: str,
    in_channels: int,
    num_classes: int,
    encoder: str = "resnet18",
    weights: str | Path | None = None,
    weights_sha256: str | None = None,
    bands: Sequence[str] | None = None,
    weights_bands: Sequence[str] | None = None,
    encoder_depth: int | None = None,
) -> nn.Module:
    """Build a registered model, optionally initialised from pretrained ``weights``.

    ``weights`` is a local file, an http(s) URL or ``hf://org/repo/file`` (see :mod:`eoforge.models.transfer`);
    ``bands`` names the model's input bands so the first convolution is adapted by band name;
    ``encoder_depth`` (None: the architecture's own) is how many encoder stages the decoder uses.
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise InputError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    if encoder_depth is None:
        model = _REGISTRY[name](in_channels, num_classes, encoder)
    elif name in _DEPTH:
        model = _DEPTH[name](in_channels, num_classes, encoder, encoder_depth)
    else:
        raise InputError(
            f"model '{name}' takes no model.encoder_depth; remove it, or use one of: {', '.join(sorted(_DEPTH))}"
        )
    if weights is not None:
        from eoforge.models.transfer import fetch_weights, load_weights

        load_weights(model, fetch_weights(weights, weights_sha256), bands=bands, weights_bands=weights_bands)
    return model


def _load_builtin() -> None:
    # the built-in architectures register on import; imported lazily so `eoforge --help` stays fast
    import eoforge.models.segmentation
    import eoforge.temporal.models  # noqa: F401  (tempcnn, ltae, pixel-mlp, pixel-cnn)


def channels_last_ok(model: nn.Module) -> bool:
    """Whether ``model`` can be put in channels-last memory format: no 5-D weight (the temporal models'
    ``Conv3d`` time convolutions have one, and torch refuses the 4-D format for them)."""
    return all(p.dim() != 5 for p in model.parameters())
