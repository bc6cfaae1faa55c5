"""Why the model decides what it decides: Grad-CAM per class, feature maps of named layers, band importance.

- :func:`grad_cam` (Selvaraju et al. 2017, adapted to segmentation): for class ``c`` the score is the sum of
  the class-``c`` logits over the pixels predicted as ``c`` (all pixels when none is); the channels of a layer's
  activations ``A_k`` are weighted by their mean gradient ``alpha_k`` and ``relu(sum_k alpha_k A_k)`` is
  upsampled to the window and scaled to [0, 1]. Written with forward hooks on the torch module (a few lines;
  the `pytorch-grad-cam` package is not a dependency and targets image classification).
- :func:`feature_maps`: activations of named layers (``model.named_modules()`` names).
- :func:`band_importance`: drop in mean IoU when one band is shuffled across the valid pixels of the given
  chips (permutation importance, Breiman 2001), so a user sees which bands the model relies on.
- :func:`explain`: the ``eoforge explain`` command, writing GeoTIFFs (georeferenced on the window) and PNGs.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from affine import Affine
from rasterio.windows import Window
from torch import nn

from eoforge.errors import InputError, PackageError
from eoforge.evaluate.metrics import metrics_from_confusion
from eoforge.io.atomic import atomic_path
from eoforge.io.rasters import RasterStack
from eoforge.package import Predictor, load_package

log = logging.getLogger(__name__)

IGNORE = 255


def _module(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules:
        names = [n for n in modules if n][:40]
        raise InputError(f"no layer '{name}' in the model; layers include: {', '.join(names)}")
    return modules[name]


def layer_names(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Names of the modules producing 4-D activations, in execution order."""
    order: list[str] = []
    hooks = []
    for name, mod in model.named_modules():
        if name and not list(mod.children()) and not isinstance(mod, nn.Identity):
            hooks.append(
                mod.register_forward_hook(
                    lambda _m, _i, out, n=name: (
                        order.append(n) if torch.is_tensor(out) and out.ndim == 4 else None
                    )
                )
            )
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return list(dict.fromkeys(order))


def default_cam_layer(model: nn.Module, x: torch.Tensor) -> str:
    """The last layer with 4-D output before the head (smp's ``segmentation_head``, else the last layer)."""
    order = layer_names(model, x)
    names = [n for n in order if not n.startswith("segmentation_head")]
    if len(names) == len(order):
        names = names[:-1]
    if not names:
        raise InputError("cannot choose a Grad-CAM layer for this model; name one with --cam-layer")
    return names[-1]


def _prepare(predictor: Predictor, x: np.ndarray) -> tuple[torch.Tensor, int, int]:
    """Normalised ``(1, C, H', W')`` tensor padded to a multiple of 32 (NaN → 0), and the original size."""
    c, h, w = x.shape
    if c != len(predictor.meta.bands):
        raise PackageError(
            f"input has {c} bands but the model was trained on {len(predictor.meta.bands)}; give the same bands"
        )
    ph, pw = -(-h // 32) * 32, -(-w // 32) * 32
    padded = np.full((1, c, ph, pw), np.nan, np.float32)
    padded[0, :, :h, :w] = x
    return predictor.normalize(padded), h, w


def _forward_with(
    model: nn.Module, t: torch.Tensor, layers: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    acts: dict[str, torch.Tensor] = {}
    hooks = [
        _module(model, n).register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out))
        for n in layers
    ]
    try:
        logits = model(t)
    finally:
        for h in hooks:
            h.remove()
    for n in layers:
        if n not in acts or not torch.is_tensor(acts[n]) or acts[n].ndim != 4:
            raise InputError(f"layer '{n}' does not produce a (N, C, H, W) activation; choose another layer")
    return logits, acts


def grad_cam(
    predictor: Predictor, x: np.ndarray, layer: str | None = None, classes: Sequence[int] | None = None
) -> tuple[np.ndarray, str]:
    """Grad-CAM heat maps ``(len(classes), H, W)`` in [0, 1] for a raw window ``x`` ``(C, H, W)``, and the
    layer used (``classes`` are class indices; default all)."""
    model = predictor.model
    t, h, w = _prepare(predictor, x)
    layer = layer or default_cam_layer(model, t)
    classes = list(range(predictor.num_classes)) if classes is None else list(classes)
    valid = torch.from_numpy(~np.isnan(x).any(axis=0)).to(t.device)
    out = np.zeros((len(classes), h, w), np.float32)
    with torch.enable_grad():
        logits, acts = _forward_with(model, t, [layer])
        a = acts[layer]
        pred = logits.argmax(1)[0, :h, :w]
        for i, c in enumerate(classes):
            mask = (pred == c) & valid
            if not mask.any():
                mask = valid
            score = logits[0, c, :h, :w][mask].sum()
            (grad,) = torch.autograd.grad(score, a, retain_graph=True)
            alpha = grad.mean(dim=(2, 3), keepdim=True)
            cam = F.relu((alpha * a).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=t.shape[-2:], mode="bilinear", align_corners=False)[0, 0, :h, :w]
            peak = cam.max()
            out[i] = (cam / peak if peak > 0 else cam).detach().float().cpu().numpy()
    return out, layer


def feature_maps(predictor: Predictor, x: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """Activations ``(C', h', w')`` of the named layers for a raw window ``x`` (cropped to the window)."""
    t, h, w = _prepare(predictor, x)
    with torch.no_grad():
        _, acts = _forward_with(predictor.model, t, list(layers))
    res = {}
    for n, a in acts.items():
        fh = math.ceil(h * a.shape[2] / t.shape[2])
        fw = math.ceil(w * a.shape[3] / t.shape[3])
        res[n] = a[0, :, :fh, :fw].float().cpu().numpy()
    return res


def _miou(predictor: Predictor, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    k = predictor.num_classes
    cm = np.zeros((k, k), np.int64)
    for i in range(0, len(images), batch_size):
        pred = predictor.predict_index(images[i : i + batch_size]).astype(np.int64)
        lab = labels[i : i + batch_size].astype(np.int64)
        ok = (lab != IGNORE) & (lab < k) & ~np.isnan(images[i : i + batch_size]).any(axis=1)
        cm += np.bincount(lab[ok] * k + pred[ok], minlength=k * k).reshape(k, k)
    names = [c.name for c in predictor.meta.classes]
    return float(metrics_from_confusion(cm, names, predictor.class_ids)["mean_iou"])


def band_importance(
    predictor: Predictor,
    images: np.ndarray,
    labels: np.ndarray,
    n_repeats: int = 1,
    seed: int = 0,
    batch_size: int = 16,
) -> dict[str, float]:
    """Permutation importance: ``{band: drop in mean IoU}`` when that band is shuffled, largest drop first.

    ``images``: raw float32 chips ``(N, C, H, W)`` with NaN at nodata; ``labels``: class indices ``(N, H, W)``
    with 255 = unlabelled. A band's values are permuted across the valid pixels of all chips (its distribution
    is kept, its relation to the labels and the other bands is broken), ``n_repeats`` times, and the drops
    averaged. A band the model ignores scores 0.
    """
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    if images.ndim != 4 or labels.shape != (images.shape[0], *images.shape[2:]):
        raise InputError(
            f"images {images.shape} and labels {labels.shape} must be (N, C, H, W) and (N, H, W)"
        )
    if n_repeats < 1:
        raise InputError(f"n_repeats {n_repeats}: must be at least 1")
    rng = np.random.default_rng(seed)
    base = _miou(predictor, images, labels, batch_size)
    valid = ~np.isnan(images).any(axis=1)
    drops: dict[str, float] = {}
    for b, name in enumerate(predictor.meta.bands):
        original = images[:, b][valid].copy()
        scores = []
        for _ in range(n_repeats):
            images[:, b][valid] = rng.permutation(original)
            scores.append(_miou(predictor, images, labels, batch_size))
        images[:, b][valid] = original
        drops[name] = base - float(np.mean(scores))
    log.info("band importance (mIoU drop from %.3f): %s", base, drops)
    return dict(sorted(drops.items(), key=lambda kv: -kv[1]))


@dataclass(frozen=True)
class ExplainResult:
    cam_layer: str
    files: list[Path]


def _write_tif(path: Path, data: np.ndarray, crs: str, transform: Affine, names: Sequence[str]) -> Path:
    with (
        atomic_path(path) as tmp,
        rasterio.open(
            tmp,
            "w",
            driver="GTiff",
            width=data.shape[2],
            height=data.shape[1],
            count=data.shape[0],
            dtype="float32",
            crs=crs,
            transform=transform,
            compress="deflate",
        ) as dst,
    ):
        dst.write(data.astype(np.float32))
        dst.descriptions = tuple(names)
    return path


def _png(path: Path, panels: np.ndarray, titles: Sequence[str], cmap: str) -> Path:
    from matplotlib.figure import Figure

    n = len(panels)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig = Figure(figsize=(3 * cols, 3 * rows))
    for i, (p, title) in enumerate(zip(panels, titles, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(p, cmap=cmap)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())
    return path


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def explain(
    model_dir: str | Path,
    images: Sequence[str | Path],
    window: Window,
    out_dir: str | Path,
    layers: Sequence[str] = (),
    cam_layer: str | None = None,
    max_channels: int = 16,
) -> ExplainResult:
    """Grad-CAM of every class and feature maps of ``layers`` for ``window`` of the stacked ``images``.

    Writes ``gradcam.tif`` (one band per class, georeferenced on the window) and ``gradcam.png``, and per layer
    ``features_<layer>.tif`` (its channels on a grid scaled to the layer's resolution) and a PNG of the first
    ``max_channels`` channels.
    """
    predictor = load_package(model_dir)
    out_dir = Path(out_dir)
    with RasterStack(images, nodata=predictor.meta.nodata) as stack:
        g = stack.grid
        if (
            window.width <= 0
            or window.height <= 0
            or window.col_off < 0
            or window.row_off < 0
            or (window.col_off + window.width > g.width or window.row_off + window.height > g.height)
        ):
            raise InputError(
                f"--window {int(window.col_off)},{int(window.row_off)},{int(window.width)},{int(window.height)} "
                f"is not inside the {g.width}x{g.height} image; give col,row,width,height inside it"
            )
        x = stack.read(window)
        transform = g.window_transform(window)
    names = [c.name for c in predictor.meta.classes]
    cams, used = grad_cam(predictor, x, cam_layer)
    files = [
        _write_tif(out_dir / "gradcam.tif", cams, g.crs, transform, names),
        _png(out_dir / "gradcam.png", cams, [f"Grad-CAM: {n}" for n in names], "inferno"),
    ]
    for name, fm in feature_maps(predictor, x, layers).items():
        scale = Affine.scale(
            x.shape[2] / fm.shape[2] if fm.shape[2] else 1, x.shape[1] / fm.shape[1] if fm.shape[1] else 1
        )
        safe = _safe(name)
        files.append(
            _write_tif(
                out_dir / f"features_{safe}.tif",
                fm,
                g.crs,
                transform * scale,
                [f"{name}[{i}]" for i in range(len(fm))],
            )
        )
        k = min(max_channels, len(fm))
        files.append(
            _png(out_dir / f"features_{safe}.png", fm[:k], [f"{name}[{i}]" for i in range(k)], "viridis")
        )
    log.info("explain: Grad-CAM on layer %s; %d files in %s", used, len(files), out_dir)
    return ExplainResult(used, files)


def parse_window(text: str) -> Window:
    """``"col,row,width,height"`` → Window."""
    try:
        col, row, width, height = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(
            f"--window '{text}': expected four integers col,row,width,height, e.g. 0,0,256,256"
        ) from None
    return Window(col, row, width, height)
