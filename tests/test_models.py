from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eoforge.errors import InputError
from eoforge.models import create_model, list_models


def test_unknown_model_lists_the_valid_ones() -> None:
    with pytest.raises(InputError, match="unknown model 'unet3000'; choose one of: .*unet"):
        create_model("unet3000", 4, 3)


def test_unet_takes_any_band_count() -> None:
    m = create_model("unet", 7, 5, "resnet18").eval()
    with torch.no_grad():
        assert m(torch.zeros(2, 7, 64, 64)).shape == (2, 5, 64, 64)
    assert {"unet", "fpn"} <= set(list_models())


def test_local_encoder_weights_load_and_skip_mismatched_first_conv(tmp_path: Path) -> None:
    src = create_model("unet", 3, 2, "resnet18")
    path = tmp_path / "enc.pt"
    torch.save(src.encoder.state_dict(), path)  # RGB encoder weights
    dst = create_model("unet", 6, 4, "resnet18", weights=path)  # 6 bands: conv1 differs, the rest loads
    a, b = src.encoder.state_dict(), dst.encoder.state_dict()
    assert torch.equal(a["layer1.0.conv1.weight"], b["layer1.0.conv1.weight"])
    assert b["conv1.weight"].shape[1] == 6


def test_bad_weights_file(tmp_path: Path) -> None:
    bad = tmp_path / "w.pt"
    bad.write_text("nope")
    with pytest.raises(InputError, match="w.pt: not a PyTorch state dict"):
        create_model("unet", 3, 2, weights=bad)
    with pytest.raises(InputError, match="missing.pt: weights file not found"):
        create_model("unet", 3, 2, weights=tmp_path / "missing.pt")
