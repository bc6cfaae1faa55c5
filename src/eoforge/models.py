"""Model registry: ``register_model`` / ``create_model`` / ``list_models`` (after timm).

Every model maps ``(N, C, H, W)`` float tensors to ``(N, K, H, W)`` logits.
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from eoforge.errors import InputError

log = logging.getLogger(__name__)

ModelFactory = Callable[[int, int, str], nn.Module]
_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator registering ``factory(in_channels, num_classes, encoder) -> nn.Module`` under ``name``."""

    def deco(fn: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def create_model(
    name: str,
    in_channels: int,
    num_classes: int,
    encoder: str = "resnet18",
    weights: str | Path | None = None,
    weights_sha256: str | None = None,
) -> nn.Module:
    """Build a registered model; ``weights`` is an optional state-dict file or URL (model or encoder)."""
    if name not in _REGISTRY:
        raise InputError(f"unknown model '{name}'; choose one of: {', '.join(list_models())}")
    model = _REGISTRY[name](in_channels, num_classes, encoder)
    if weights is not None:
        load_weights(model, fetch_weights(weights, weights_sha256))
    return model


def cache_dir() -> Path:
    return Path(os.environ.get("EOFORGE_CACHE") or Path.home() / ".cache" / "eoforge") / "weights"


def fetch_weights(source: str | Path, sha256: str | None = None) -> Path:
    """A local weights file, or an http(s) URL downloaded once into :func:`cache_dir` (hash-checked)."""
    text = str(source)
    if "://" not in text:
        path = Path(text)
        if not path.is_file():
            raise InputError(f"{path}: weights file not found; check model.weights")
        if sha256 and not _sha256(path).startswith(sha256.lower()):
            raise InputError(f"{path}: SHA-256 differs from model.weights_sha256 {sha256}; check the file")
        return path
    if not text.startswith(("http://", "https://")):
        raise InputError(f"{text}: only http(s) URLs or local files are supported for model.weights")
    name = Path(urllib.parse.urlparse(text).path).name or "weights.pt"
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    target = cache_dir() / f"{key}-{name}"
    if target.is_file() and (not sha256 or _sha256(target).startswith(sha256.lower())):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("downloading %s to %s", text, target)
    try:
        # writes to a temporary file and moves it into place only when the hash (if given) matches
        torch.hub.download_url_to_file(
            text, str(target), hash_prefix=sha256.lower() if sha256 else None, progress=False
        )
    except RuntimeError as exc:
        raise InputError(
            f"{text}: downloaded weights fail the check ({exc}); check model.weights_sha256"
        ) from None
    except (OSError, urllib.error.URLError) as exc:
        raise InputError(
            f"{text}: could not download the weights ({exc}); check the address or give a local file"
        ) from None
    return target


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _smp(cls_name: str) -> ModelFactory:
    def factory(in_channels: int, num_classes: int, encoder: str) -> nn.Module:
        import segmentation_models_pytorch as smp

        cls = getattr(smp, cls_name)
        try:
            return cls(
                encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes
            )
        except KeyError:
            raise InputError(
                f"unknown encoder '{encoder}' for {cls_name}; see segmentation-models-pytorch's encoder list "
                "(e.g. resnet18, resnet34, efficientnet-b0)"
            ) from None

    return factory


register_model("unet")(_smp("Unet"))
register_model("unetplusplus")(_smp("UnetPlusPlus"))
register_model("fpn")(_smp("FPN"))
register_model("deeplabv3plus")(_smp("DeepLabV3Plus"))


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a local state dict into the whole model, or into its encoder when the keys are an encoder's.

    Tensors whose shapes differ (a first convolution for another band count, a head for other classes) are
    skipped and logged, so weights trained on RGB still initialise the rest of an N-band model.
    """
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: not a PyTorch state dict ({str(exc).splitlines()[0]})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(
            f"{path}: expected a state dict (name -> tensor); save one with torch.save(m.state_dict())"
        )
    target: nn.Module = model
    own = model.state_dict()
    if not any(k in own for k in state) and hasattr(model, "encoder"):
        target = model.encoder  # type: ignore[assignment]
        own = target.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise InputError(f"{path}: no tensor in this file matches the model '{type(model).__name__}'")
    skipped = [k for k in state if k not in usable]
    target.load_state_dict(usable, strict=False)
    log.info("loaded %d tensors from %s (skipped %d: %s)", len(usable), path, len(skipped), skipped[:5])
