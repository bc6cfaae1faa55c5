"""Registry architectures build and train a step; weights adapt to bands by name; hf:// weights from a cache."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from eoforge.errors import InputError
from eoforge.models import adapt_conv_weight, create_model, fetch_weights, list_encoders, list_models

SMALL = "tu-mobilenetv3_small_050"
ARCHS = {  # architecture -> smallest encoder it builds with
    "unet": SMALL,
    "unetplusplus": SMALL,
    "fpn": SMALL,
    "pspnet": SMALL,
    "deeplabv3": SMALL,
    "deeplabv3plus": SMALL,
    "linknet": SMALL,
    "manet": SMALL,
    "pan": SMALL,
    "upernet": SMALL,
    "segformer": "mit_b0",
    "dpt": "tu-vit_tiny_patch16_224",
    "fcn8s": SMALL,
}


def test_registry_lists_every_architecture() -> None:
    assert set(ARCHS) <= set(list_models())
    assert "resnet18" in list_encoders("unet") and "tu-resnet18" in list_encoders("unet")


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_architecture_trains_one_step_on_a_4_band_chip(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, 4, 3, ARCHS[arch])
    size = 128 if arch == "pan" else 64  # PAN's pyramid pooling needs 4 px at stride 32
    x = torch.randn(2, 4, size, size)
    y = torch.randint(0, 3, (2, size, size))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    logits = model(x)
    assert logits.shape == (2, 3, size, size)
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    first = next(p for p in model.parameters() if p.grad is not None)
    before = first.detach().clone()
    opt.step()
    assert not torch.equal(before, first)


def test_unknown_encoder_lists_the_valid_ones() -> None:
    with pytest.raises(
        InputError, match=r"unknown encoder 'resnet9000' for unet; choose one of: .*resnet18.*tu-"
    ):
        create_model("unet", 4, 3, "resnet9000")
    with pytest.raises(InputError, match="model dpt cannot use encoder 'resnet18'"):
        create_model("dpt", 4, 3, "resnet18")


def test_rgb_weights_keep_their_response_for_red_green_blue_nir(tmp_path: Path) -> None:
    torch.manual_seed(1)
    rgb = create_model("unet", 3, 2, "resnet18").eval()
    path = tmp_path / "rgb.pt"
    torch.save({"state_dict": rgb.encoder.state_dict(), "bands": ["red", "green", "blue"]}, path)
    four = create_model("unet", 4, 2, "resnet18", weights=path, bands=["red", "green", "blue", "nir"]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = rgb.encoder.conv1(x)
        # the response to the RGB part keeps its shape, scaled by 3/4 (scale-preserving mean for the new band)
        got = four.encoder.conv1(torch.cat([x, torch.zeros(2, 1, 32, 32)], 1))
        assert torch.allclose(got, ref * 0.75, atol=1e-5)
        # bands all equal: exactly the original activation, through the whole encoder
        same = torch.randn(1, 1, 32, 32)
        a = rgb.encoder(same.expand(1, 3, 32, 32))[-1]
        b = four.encoder(same.expand(1, 4, 32, 32))[-1]
        assert torch.allclose(a, b, atol=1e-4)


def test_adapt_by_band_name_reorders_and_maps_sentinel2_ids() -> None:
    w = torch.arange(2 * 4 * 1 * 1, dtype=torch.float32).view(2, 4, 1, 1)
    out, reused = adapt_conv_weight(w, ["B02", "B03", "B04", "B08"], ["nir", "red", "swir16"])
    assert reused == ["nir", "red"]
    scale = 4 / 3
    assert torch.allclose(out[:, 0], w[:, 3] * scale)
    assert torch.allclose(out[:, 1], w[:, 2] * scale)
    assert torch.allclose(out[:, 2], w.mean(1) * scale)
    with pytest.raises(InputError, match="takes 4 bands but names 3"):
        adapt_conv_weight(w, ["red", "green", "blue"], ["red"])


def test_safetensors_band_metadata_and_a_head_for_other_classes(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(2)
    src = create_model("fpn", 4, 5, SMALL)
    path = tmp_path / "s2.safetensors"
    state = {k: v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(path), metadata={"bands": json.dumps(["B02", "B03", "B04", "B08"])})
    dst = create_model("fpn", 2, 3, SMALL, weights=path, bands=["nir", "blue"])
    key = "encoder.model.conv_stem.weight"
    assert torch.allclose(dst.state_dict()[key][:, 0], state[key][:, 3] * 2)
    assert torch.allclose(dst.state_dict()[key][:, 1], state[key][:, 0] * 2)
    # the decoder came from the file; the head (5 classes there, 3 here) did not
    dec = next(k for k in state if k.startswith("decoder."))
    assert torch.equal(dst.state_dict()[dec], state[dec])
    other = tmp_path / "other.pt"
    torch.save(create_model("unet", 4, 5, "resnet18").state_dict(), other)
    with pytest.raises(InputError, match=r"other.pt: tensors .* have other shapes than model FPN"):
        create_model("fpn", 4, 3, SMALL, weights=other)


def _hf_cache(root: Path, repo: str, filename: str, data: bytes) -> None:
    """A Hugging Face hub cache entry as huggingface_hub lays it out (blob named by SHA-256, snapshot link)."""
    base = root / f"models--{repo.replace('/', '--')}"
    digest = hashlib.sha256(data).hexdigest()
    commit = "0" * 40
    (base / "blobs").mkdir(parents=True)
    (base / "blobs" / digest).write_bytes(data)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    snap = base / "snapshots" / commit / filename
    snap.parent.mkdir(parents=True)
    snap.symlink_to(base / "blobs" / digest)


def test_hf_weights_from_the_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    src = create_model("unet", 3, 2, "resnet18")
    buf = tmp_path / "enc.pt"
    torch.save(src.encoder.state_dict(), buf)
    data = buf.read_bytes()
    _hf_cache(tmp_path / "hub", "org/rgb-weights", "weights/enc.pt", data)
    digest = hashlib.sha256(data).hexdigest()

    path = fetch_weights("hf://org/rgb-weights/weights/enc.pt", digest[:12])
    assert path.read_bytes() == data
    dst = create_model("unet", 3, 2, "resnet18", weights="hf://org/rgb-weights/weights/enc.pt")
    assert torch.equal(dst.encoder.state_dict()["conv1.weight"], src.encoder.state_dict()["conv1.weight"])

    with pytest.raises(InputError, match="SHA-256 differs from model.weights_sha256"):
        fetch_weights("hf://org/rgb-weights/weights/enc.pt", "ff" * 32)
    with pytest.raises(
        InputError, match="hf://org/rgb-weights/missing.pt: weights file not found in the Hugging"
    ):
        fetch_weights("hf://org/rgb-weights/missing.pt")
    with pytest.raises(InputError, match="expected hf://ORG/REPO/PATH/TO/FILE"):
        fetch_weights("hf://just-a-repo")
    blob = next((tmp_path / "hub" / "models--org--rgb-weights" / "blobs").iterdir())
    blob.write_bytes(data[:-10])  # corrupted in the cache
    with pytest.raises(InputError, match="is corrupt"):
        fetch_weights("hf://org/rgb-weights/weights/enc.pt")


def test_cli_lists_encoders_and_refuses_an_unknown_arch(capsys: pytest.CaptureFixture[str]) -> None:
    from eoforge.cli import main

    main(["models", "--encoders", "mobilenetv3_small_05", "--arch", "fpn"])
    assert "tu-mobilenetv3_small_050" in capsys.readouterr().out.split()
    with pytest.raises(SystemExit) as exc:
        main(["models", "--encoders", "", "--arch", "nonet"])
    assert exc.value.code == 2
    assert "unknown model 'nonet'; choose one of: deeplabv3" in capsys.readouterr().err
