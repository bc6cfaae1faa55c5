"""Per-pixel temporal models and pixel models, all fully convolutional over chips.

Every model maps ``(N, C, H, W)`` to ``(N, K, H, W)`` logits like the segmentation models, so the chip
trainer and the streaming predictor use them unchanged. Temporal models read the channels as dates stacked
date-major: channel ``t * n_bands + b`` is band ``b`` of date ``t`` (``C = n_times * n_bands``).

- ``tempcnn``: Temporal CNN (Pelletier, Webb & Petitjean 2019, Remote Sensing 11(5) 523): three 1-D
  convolutions over time (64 filters, kernel 5, batch norm, ReLU, dropout), a dense layer of 256, softmax.
  The time convolution is a ``Conv3d`` with kernel ``(5, 1, 1)`` so pixels never leave the tensor layout.
- ``ltae``: Lightweight Temporal Attention Encoder (Garnot & Landrieu 2020, ECCV workshops): a per-date
  embedding, one learnt master query per head attending over dates, channel groups as values, then an MLP.
  Dates are positions 0..T-1 in the sinusoidal encoding (day-of-year positions are not known to the registry).
  Narrow widths get fewer heads (:func:`ltae_heads`); the MLP's batch norms need a dozen optimiser steps before
  their running statistics (used in evaluation) catch up: a run of 2-4 steps scores far below its training fit.
- ``pixel-mlp``: 1x1 convolutions (the ACES "DNN"): a multilayer perceptron applied to each pixel.
- ``pixel-cnn``: 3x3 convolutions with no downsampling (NEODAAS mangrove style): a small neighbourhood.

The registry's ``encoder`` string carries the layout: ``t23`` = 23 dates (bands = channels / 23), optionally
``-w64`` for the hidden width (``t23-w128``, ``w32``). Any other string (such as the config default
``resnet18``) keeps the defaults: one band per date for temporal models.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import torch
from torch import nn

from eoforge.errors import InputError
from eoforge.models import list_models, register_model

log = logging.getLogger(__name__)

_SPEC = re.compile(r"^(?:t(?P<t>\d+))?(?:[-_]?w(?P<w>\d+))?$")


@dataclass(frozen=True)
class Layout:
    """How the channels of a temporal input are laid out: ``n_times`` dates of ``n_bands`` bands."""

    n_times: int
    n_bands: int
    width: int | None = None


def parse_spec(encoder: str, in_channels: int, temporal: bool = True) -> Layout:
    """Read ``t<dates>[-w<width>]`` from the registry's encoder string (see the module docstring)."""
    m = _SPEC.match(encoder.strip().lower()) if encoder else None
    if m is None or not (m.group("t") or m.group("w")):
        if temporal:
            log.info(
                "model.encoder '%s' gives no date count: %d dates of 1 band assumed", encoder, in_channels
            )
        return Layout(in_channels, 1) if temporal else Layout(1, in_channels)
    width = int(m.group("w")) if m.group("w") else None
    if width is not None and width < 1:
        raise InputError(f"model.encoder '{encoder}': width must be >= 1, e.g. t23-w64")
    if not m.group("t") or not temporal:
        return Layout(in_channels, 1, width) if temporal else Layout(1, in_channels, width)
    n_times = int(m.group("t"))
    if n_times < 1 or in_channels % n_times:
        raise InputError(
            f"model.encoder '{encoder}': {in_channels} input channels are not a whole number of bands for "
            f"{n_times} dates; set model.encoder to t<dates> with dates dividing {in_channels}"
        )
    return Layout(n_times, in_channels // n_times, width)


def to_pixels(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """``(N, T*B, H, W)`` -> ``(N*H*W, T, B)``: one series per pixel."""
    n, c, h, w = x.shape
    if c != layout.n_times * layout.n_bands:
        raise InputError(
            f"the model expects {layout.n_times} dates x {layout.n_bands} bands = "
            f"{layout.n_times * layout.n_bands} channels, got {c}; check the bands of the input"
        )
    t, b = layout.n_times, layout.n_bands
    return x.view(n, t, b, h, w).permute(0, 3, 4, 1, 2).reshape(-1, t, b)


def from_pixels(y: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
    """``(N*H*W, K)`` -> ``(N, K, H, W)``."""
    return y.view(n, h, w, -1).permute(0, 3, 1, 2).contiguous()


class TempCNN(nn.Module):
    """Pelletier et al. (2019) Temporal CNN, applied independently to every pixel of a chip."""

    def __init__(
        self,
        layout: Layout,
        num_classes: int,
        filters: int = 64,
        kernel: int = 5,
        hidden: int = 256,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.layout = layout
        layers: list[nn.Module] = []
        c_in = layout.n_bands
        for _ in range(3):
            layers += [
                nn.Conv3d(c_in, filters, (kernel, 1, 1), padding=(kernel // 2, 0, 0)),
                nn.BatchNorm3d(filters),
                nn.ReLU(inplace=True),
                nn.Dropout(dropout),
            ]
            c_in = filters
        self.temporal = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Conv2d(filters * layout.n_times, hidden, 1),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        t, b = self.layout.n_times, self.layout.n_bands
        if c != t * b:
            raise InputError(f"TempCNN expects {t} dates x {b} bands = {t * b} channels, got {c}")
        z = self.temporal(x.view(n, t, b, h, w).transpose(1, 2))  # (N, F, T, H, W)
        out: torch.Tensor = self.head(z.reshape(n, -1, h, w))  # flatten (filter, date) as in the paper
        return out


def sinusoid_table(positions: torch.Tensor, dim: int, period: float = 1000.0) -> torch.Tensor:
    """Transformer positional encoding ``(T, dim)`` for the given positions (days or indices)."""
    i = torch.arange(dim, dtype=torch.float32)
    angle = positions.float()[:, None] / period ** (2 * (i // 2) / dim)[None, :]
    return torch.where(i.long() % 2 == 0, torch.sin(angle), torch.cos(angle))


class LTAE(nn.Module):
    """Garnot & Landrieu (2020) Lightweight Temporal Attention Encoder with a per-pixel classifier."""

    def __init__(
        self,
        layout: Layout,
        num_classes: int,
        d_model: int = 128,
        n_head: int = 16,
        d_k: int = 8,
        mlp: tuple[int, ...] = (256, 128),
        dropout: float = 0.2,
        positions: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if d_model % n_head:
            raise InputError(f"L-TAE: d_model {d_model} must be a multiple of the {n_head} heads")
        self.layout = layout
        self.n_head, self.d_k = n_head, d_k
        self.inconv = nn.Sequential(nn.Conv1d(layout.n_bands, d_model, 1), nn.GroupNorm(n_head, d_model))
        pos = positions if positions is not None else torch.arange(layout.n_times)
        # one table of d_model / n_head repeated per head, as in the reference implementation
        self.register_buffer(
            "pos", sinusoid_table(pos, d_model // n_head).repeat(1, n_head), persistent=False
        )
        self.query = nn.Parameter(torch.randn(n_head, d_k) * math.sqrt(2.0 / d_k))
        self.fc_k = nn.Linear(d_model, n_head * d_k)
        self.out_norm = nn.GroupNorm(n_head, d_model)
        layers: list[nn.Module] = []
        c_in = d_model
        for c in mlp:
            layers += [nn.Linear(c_in, c), nn.BatchNorm1d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.mlp = nn.Sequential(*layers, nn.Dropout(dropout))
        self.classifier = nn.Linear(c_in, num_classes)

    def encode(self, series: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, T, B)`` series -> ``(P, d_model)`` embeddings and ``(P, heads, T)`` attention weights."""
        p, t, _ = series.shape
        pos: torch.Tensor = self.pos  # type: ignore[assignment]
        e = self.inconv(series.transpose(1, 2)).transpose(1, 2) + pos[:t]  # (P, T, d)
        k = self.fc_k(e).view(p, t, self.n_head, self.d_k)
        attn = torch.softmax(torch.einsum("pthd,hd->pht", k, self.query) / math.sqrt(self.d_k), dim=-1)
        v = e.view(p, t, self.n_head, -1)
        out = torch.einsum("pht,pthc->phc", attn, v).reshape(p, -1)
        return self.out_norm(out), attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        z, _ = self.encode(to_pixels(x, self.layout))
        return from_pixels(self.classifier(self.mlp(z)), n, h, w)


class PixelMLP(nn.Module):
    """A multilayer perceptron per pixel as 1x1 convolutions (the ACES 'DNN')."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(c_in, width, 1),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
                nn.Dropout(0.1),
            ]
            c_in = width
        self.net = nn.Sequential(*layers, nn.Conv2d(c_in, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class PixelCNN(nn.Module):
    """3x3 convolutions with padding and no downsampling: a small neighbourhood per pixel (receptive field 7)."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 64, depth: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for _ in range(depth):
            layers += [
                nn.Conv2d(c_in, width, 3, padding=1, padding_mode="reflect"),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            c_in = width
        self.net = nn.Sequential(*layers, nn.Dropout2d(0.1), nn.Conv2d(c_in, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def tempcnn(in_channels: int, num_classes: int, encoder: str) -> nn.Module:
    layout = parse_spec(encoder, in_channels)
    return TempCNN(layout, num_classes, filters=layout.width or 64)


def ltae_heads(d_model: int) -> int:
    """Attention heads for an L-TAE of width ``d_model``: 16 (the paper's) down to at least 4 channels per head.

    Each head's values are a group of ``d_model / heads`` channels normalised together (``GroupNorm``); with
    one channel per head (``w16`` and 16 heads) that normalisation maps every embedding to zero and the model
    cannot learn. The largest divisor of ``d_model`` that is <= min(16, d_model / 4) keeps widths >= 64 as
    they were (16 heads) and gives narrow models fewer, wider heads."""
    most = max(1, min(16, d_model // 4))
    return max(h for h in range(1, most + 1) if d_model % h == 0)


def ltae(in_channels: int, num_classes: int, encoder: str) -> nn.Module:
    layout = parse_spec(encoder, in_channels)
    d_model = layout.width or 128
    return LTAE(layout, num_classes, d_model=d_model, n_head=ltae_heads(d_model))


def pixel_mlp(in_channels: int, num_classes: int, encoder: str) -> nn.Module:
    return PixelMLP(in_channels, num_classes, width=parse_spec(encoder, in_channels, False).width or 64)


def pixel_cnn(in_channels: int, num_classes: int, encoder: str) -> nn.Module:
    return PixelCNN(in_channels, num_classes, width=parse_spec(encoder, in_channels, False).width or 64)


TEMPORAL_MODELS = ("tempcnn", "ltae")


def encoder_for_dates(arch: str, encoder: str, n_dates: int) -> str:
    """The registry ``encoder`` string of a temporal ``arch`` trained on ``n_dates`` dates: ``t<n>`` (keeping a
    ``-w<width>`` given in the config); a ``t<n>`` that disagrees with the stack is an error. Other archs (a
    U-Net over dates stacked as channels) keep their encoder."""
    if arch not in TEMPORAL_MODELS:
        return encoder
    m = _SPEC.match(encoder.strip().lower())
    if m is None or not (m.group("t") or m.group("w")):
        return f"t{n_dates}"
    if m.group("t") and int(m.group("t")) != n_dates:
        raise InputError(
            f"model.encoder '{encoder}' says {m.group('t')} dates but the prepared stack has {n_dates}; "
            f"use t{n_dates} or leave the date count out"
        )
    return f"t{n_dates}" + (f"-w{m.group('w')}" if m.group("w") else "")


PIXEL_MODELS = ("pixel-mlp", "pixel-cnn")

for _name, _factory in (
    ("tempcnn", tempcnn),
    ("ltae", ltae),
    ("pixel-mlp", pixel_mlp),
    ("pixel-cnn", pixel_cnn),
):
    if _name not in list_models():  # importing twice (reload) must not fail
        register_model(_name)(_factory)
