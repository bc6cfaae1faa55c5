"""Explainability: Grad-CAM highlights what the model looks at; permutation importance ranks bands."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from conftest import TRANSFORM, write_tif
from helpers import identity_package
from torch import nn

from eoforge.cli import main
from eoforge.errors import InputError
from eoforge.evaluate.explain import band_importance, default_cam_layer, grad_cam, parse_window
from eoforge.models import list_models, register_model
from eoforge.package import ClassInfo, PackageMeta, load_package, save_package


class TopLeftOnly(nn.Module):
    """Sees only the top-left 16x16 pixels: class 1 where band 0 is high there, class 0 everywhere else."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Conv2d(in_channels, 4, 1, bias=False)
        self.head = nn.Conv2d(4, num_classes, 1, bias=False)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[:, 0] = 1.0
            self.head.weight.zero_()
            self.head.weight[1] = 1.0
            self.head.weight[0] = -1.0
        mask = torch.zeros(1, 1, 64, 64)
        mask[..., :16, :16] = 1
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * self.mask[..., : x.shape[2], : x.shape[3]]
        return self.head(torch.relu(self.features(x)))


if "test-top-left" not in list_models():
    register_model("test-top-left")(lambda c, k, enc: TopLeftOnly(c, k))


def _package(path: Path) -> Path:
    meta = PackageMeta(
        arch="test-top-left",
        encoder="none",
        bands=["b0", "b1"],
        mean=[0.0, 0.0],
        std=[1.0, 1.0],
        nodata=None,
        chip_size=32,
        classes=[ClassInfo(1, "other", "#000000"), ClassInfo(2, "target", "#ff0000")],
        tile=64,
        overlap=16,
    )
    return save_package(path, TopLeftOnly(2, 2), meta, {"test": True})


def test_grad_cam_highlights_the_only_region_the_model_looks_at(tmp_path: Path) -> None:
    predictor = load_package(_package(tmp_path / "m"))
    x = np.random.default_rng(0).uniform(0.5, 1.5, (2, 64, 64)).astype(np.float32)
    cams, layer = grad_cam(predictor, x, "features", classes=[1])
    assert layer == "features" and cams.shape == (1, 64, 64)
    cam = cams[0]
    assert cam[:16, :16].mean() > 0.4 and cam.max() == pytest.approx(1.0)
    assert cam[20:, :].max() < 0.05 and cam[:, 20:].max() < 0.05  # away from the bilinear edge: nothing
    assert default_cam_layer(predictor.model, predictor.normalize(x[None])) == "features"


def test_permutation_importance_ranks_the_ignored_band_last(tmp_path: Path) -> None:
    predictor = load_package(identity_package(tmp_path / "m", bands=3))  # uses band 0 only
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (6, 16, 16))
    images = rng.normal(0, 0.1, (6, 3, 16, 16)).astype(np.float32)
    images[:, 0] += labels
    images[:, 2] += labels  # informative but unused by the model: still no drop
    images[0, :, :2, :2] = np.nan
    labels[1, 0, :] = 255
    before = images.copy()
    imp = band_importance(predictor, images, labels, n_repeats=2)
    ranked = list(imp)
    assert ranked[0] == "b0" and imp["b0"] > 0.5 and ranked[-1] in ("b1", "b2")
    assert imp["b1"] == 0.0 and imp["b2"] == 0.0
    np.testing.assert_array_equal(images, before)  # the caller's chips are restored


def test_explain_command_writes_georeferenced_maps(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eoforge.models import create_model

    meta = PackageMeta(
        "unet",
        "resnet18",
        ["b0", "b1"],
        [0, 0],
        [1, 1],
        None,
        32,
        [ClassInfo(1, "a", "#000000"), ClassInfo(2, "b", "#ffffff"), ClassInfo(3, "c", "#ff0000")],
        64,
        16,
    )
    pkg = save_package(tmp_path / "unet", create_model("unet", 2, 3, "resnet18"), meta, {})
    img = write_tif(
        tmp_path / "img.tif", np.random.default_rng(0).normal(size=(2, 64, 64)).astype(np.float32)
    )
    out = tmp_path / "x"
    main(
        [
            "-q",
            "explain",
            str(pkg),
            str(img),
            "--window",
            "8,4,40,36",
            "--layers",
            "encoder.layer1",
            "-o",
            str(out),
        ]
    )
    with rasterio.open(out / "gradcam.tif") as src:
        assert src.count == 3 and (src.width, src.height) == (40, 36)
        assert src.transform.c == TRANSFORM.c + 8 * 10 and src.transform.f == TRANSFORM.f - 4 * 10
        a = src.read()
        assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    with rasterio.open(out / "features_encoder_layer1.tif") as src:
        assert src.count == 64 and src.res == (40.0, 40.0)  # layer1 of resnet18 runs at 1/4 resolution
    assert (out / "gradcam.png").read_bytes()[:4] == b"\x89PNG" and (
        out / "features_encoder_layer1.png"
    ).is_file()
    assert "Grad-CAM layer" in capsys.readouterr().out
    with pytest.raises(InputError, match="col,row,width,height"):
        parse_window("1,2,3")
    with pytest.raises(SystemExit):
        main(["explain", str(pkg), str(img), "--window", "60,60,10,10", "-o", str(out)])
    assert "not inside" in capsys.readouterr().err
