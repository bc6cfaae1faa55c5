"""Test helpers: a pointwise 'identity-like' model registered under a test name, and its package."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from eoforge.models import list_models, register_model
from eoforge.package import ClassInfo, PackageMeta, save_package


class PickBand0(nn.Module):
    """Predicts class k where band 0 is closest to k: a model whose map reproduces the input layout."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("k", torch.arange(num_classes, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((x[:, :1] - self.k) ** 2)


if "test-pick-band0" not in list_models():
    register_model("test-pick-band0")(lambda c, k, enc: PickBand0(c, k))


def identity_package(
    path: Path, bands: int = 2, class_ids: tuple[int, ...] = (10, 20, 30), tile: int = 64, overlap: int = 16
) -> Path:
    meta = PackageMeta(
        arch="test-pick-band0",
        encoder="none",
        bands=[f"b{i}" for i in range(bands)],
        mean=[0.0] * bands,
        std=[1.0] * bands,
        nodata=None,
        chip_size=32,
        classes=[ClassInfo(c, f"class{c}", "#112233") for c in class_ids],
        tile=tile,
        overlap=overlap,
    )
    return save_package(path, PickBand0(bands, len(class_ids)), meta, {"test": True})


class WindowMean(nn.Module):
    """Predicts, everywhere in a window, the class closest to the window's mean of band 0: an output that
    depends on the window, so maps predicted with different tiles differ."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("k", torch.arange(num_classes, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x[:, :1].mean(dim=(2, 3), keepdim=True).expand(-1, -1, x.shape[2], x.shape[3])
        return -((m - self.k) ** 2)


if "test-window-mean" not in list_models():
    register_model("test-window-mean")(lambda c, k, enc: WindowMean(c, k))


def package_for(
    path: Path,
    arch: str,
    bands: list[str],
    classes: dict[int, str],
    tile: int,
    overlap: int,
    chip_size: int = 32,
) -> Path:
    """A package of a registered test model for a scene with these bands and classes."""
    meta = PackageMeta(
        arch=arch,
        encoder="none",
        bands=bands,
        mean=[0.0] * len(bands),
        std=[1.0] * len(bands),
        nodata=None,
        chip_size=chip_size,
        classes=[ClassInfo(c, n, "#336699") for c, n in classes.items()],
        tile=tile,
        overlap=overlap,
    )
    model = (
        WindowMean(len(bands), len(classes))
        if arch == "test-window-mean"
        else PickBand0(len(bands), len(classes))
    )
    return save_package(path, model, meta, {"test": True})


class TinyConv(nn.Module):
    """One 3x3 convolution: a trainable model that fits and runs in milliseconds (fault and resume tests)."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return out


if "test-tiny" not in list_models():
    register_model("test-tiny")(lambda c, k, enc: TinyConv(c, k))


class RollBand0(nn.Module):
    """The class nearest band 0 one pixel to the left: not flip-equivariant, so D4 TTA changes its map."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("k", torch.arange(num_classes, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -((torch.roll(x[:, :1], 1, dims=3) - self.k) ** 2)


if "test-roll-band0" not in list_models():
    register_model("test-roll-band0")(lambda c, k, enc: RollBand0(c, k))
