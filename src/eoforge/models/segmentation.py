"""Segmentation architectures: every segmentation-models-pytorch (smp) architecture, plus FCN-8s.

Encoders are smp's own (``resnet18``, ``efficientnet-b0``, ``mit_b0`` …) or any timm model as ``tu-NAME``.
Weights are never downloaded here: models start random and :mod:`eoforge.models.transfer` loads weights.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from eoforge.errors import InputError
from eoforge.models.registry import register_model

SMP_ARCHITECTURES = {
    "unet": "Unet",
    "unetplusplus": "UnetPlusPlus",
    "fpn": "FPN",
    "pspnet": "PSPNet",
    "deeplabv3": "DeepLabV3",
    "deeplabv3plus": "DeepLabV3Plus",
    "linknet": "Linknet",
    "manet": "MAnet",
    "pan": "PAN",
    "upernet": "UPerNet",
    "segformer": "Segformer",
    "dpt": "DPT",
}


@functools.cache
def smp_encoders() -> list[str]:
    """smp's encoder names, then the ``tu-`` prefix form of every timm model."""
    import segmentation_models_pytorch as smp
    import timm

    return list(smp.encoders.get_encoder_names()) + [f"tu-{m}" for m in timm.list_models()]


def _valid_encoder(encoder: str) -> bool:
    return encoder in smp_encoders()


def _unknown_encoder(arch: str, encoder: str) -> InputError:
    import segmentation_models_pytorch as smp

    return InputError(
        f"unknown encoder '{encoder}' for {arch}; choose one of: {', '.join(smp.encoders.get_encoder_names())}, "
        "or tu-NAME for any timm model (`eoforge models --encoders` lists them)"
    )


def _depth_kwargs(arch: str, cls: type, depth: int) -> dict[str, Any]:
    """smp keyword arguments for ``depth`` encoder stages: ``encoder_depth`` and, for decoders with one
    block per stage (Unet, UnetPlusPlus, MAnet), their default ``decoder_channels`` cut to the last ``depth``."""
    params = inspect.signature(cls).parameters
    if "encoder_depth" not in params:
        raise InputError(f"model {arch} takes no model.encoder_depth; remove it")
    kwargs: dict[str, Any] = {"encoder_depth": depth}
    channels = params.get("decoder_channels")
    if channels is not None and isinstance(channels.default, (list, tuple)) and len(channels.default) == 5:
        kwargs["decoder_channels"] = tuple(channels.default)[5 - depth :]
    return kwargs


def _prune_unused_stages(model: nn.Module, depth: int) -> None:
    """smp's ResNet encoders keep every stage whatever their depth; the unused ones would hold 8 M of the
    resnet18's 11 M parameters at depth 4 (saved in packages, skipped by the optimiser, unused parameters under
    DDP). Replace them by identities; their forward never calls them."""
    from segmentation_models_pytorch.encoders.resnet import ResNetEncoder

    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, ResNetEncoder):
        for stage in range(max(depth, 1) + 1, 6):  # stage s >= 2 is resnet layer s - 1
            setattr(encoder, f"layer{stage - 1}", nn.Identity())


class _SmpFactory(Protocol):  # fits both ModelFactory and DepthFactory of the registry
    def __call__(
        self, in_channels: int, num_classes: int, encoder: str, encoder_depth: int | None = None
    ) -> nn.Module: ...


def _smp(arch: str, cls_name: str) -> _SmpFactory:
    def factory(
        in_channels: int, num_classes: int, encoder: str, encoder_depth: int | None = None
    ) -> nn.Module:
        import segmentation_models_pytorch as smp

        if not _valid_encoder(encoder):
            raise _unknown_encoder(arch, encoder)
        cls = getattr(smp, cls_name)
        kwargs = {"encoder_name": encoder, "encoder_weights": None, "in_channels": in_channels}
        if encoder_depth is not None:
            kwargs.update(_depth_kwargs(arch, cls, encoder_depth))
        try:
            if cls_name == "DPT":
                try:  # vision transformers need dynamic_img_size to accept chips of any size
                    return cls(classes=num_classes, dynamic_img_size=True, **kwargs)
                except TypeError:
                    pass
            model: nn.Module = cls(classes=num_classes, **kwargs)
        except (ValueError, KeyError, RuntimeError, AssertionError) as exc:
            what = f"encoder '{encoder}'" + (
                f" at encoder_depth {encoder_depth}" if encoder_depth is not None else ""
            )
            raise InputError(
                f"model {arch} cannot use {what} ({str(exc).splitlines()[0]}); pick another "
                "encoder (`eoforge models --encoders`) or depth"
            ) from None
        if encoder_depth is not None:
            _prune_unused_stages(model, encoder_depth)
        return model

    return factory


for _name, _cls in SMP_ARCHITECTURES.items():
    _factory = _smp(_name, _cls)
    register_model(_name, encoders=smp_encoders, with_depth=_factory)(_factory)


class FCN8s(nn.Module):
    """FCN-8s (Long et al. 2015) on an smp encoder: class scores from strides 32, 16 and 8, fused by addition.

    Hand-written because neither smp nor timm ships it; upsampling is bilinear instead of learned
    deconvolutions (the fixed bilinear initialisation of the paper, kept fixed).
    """

    def __init__(self, in_channels: int, num_classes: int, encoder: str) -> None:
        super().__init__()
        import segmentation_models_pytorch as smp

        if not _valid_encoder(encoder):
            raise _unknown_encoder("fcn8s", encoder)
        try:
            self.encoder = smp.encoders.get_encoder(encoder, in_channels=in_channels, depth=5, weights=None)
        except (ValueError, KeyError) as exc:
            raise InputError(
                f"model fcn8s cannot use encoder '{encoder}' ({str(exc).splitlines()[0]}); pick another encoder"
            ) from None
        ch = self.encoder.out_channels
        self.score32 = nn.Conv2d(ch[-1], num_classes, 1)
        self.score16 = nn.Conv2d(ch[-2], num_classes, 1)
        self.score8 = nn.Conv2d(ch[-3], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder(x)
        s = self.score32(f[-1])
        s = F.interpolate(s, size=f[-2].shape[-2:], mode="bilinear", align_corners=False) + self.score16(
            f[-2]
        )
        s = F.interpolate(s, size=f[-3].shape[-2:], mode="bilinear", align_corners=False) + self.score8(f[-3])
        out: torch.Tensor = F.interpolate(s, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


register_model("fcn8s", encoders=smp_encoders)(lambda c, k, enc: FCN8s(c, k, enc))
