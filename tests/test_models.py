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


def test_local_encoder_weights_load_and_adapt_the_first_conv(tmp_path: Path) -> None:
    src = create_model("unet", 3, 2, "resnet18")
    path = tmp_path / "enc.pt"
    torch.save(src.encoder.state_dict(), path)  # RGB encoder weights
    bands = ["blue", "green", "red", "nir", "swir16", "swir22"]
    dst = create_model("unet", 6, 4, "resnet18", weights=path, bands=bands)
    a, b = src.encoder.state_dict(), dst.encoder.state_dict()
    assert torch.equal(a["layer1.0.conv1.weight"], b["layer1.0.conv1.weight"])
    w, v = a["conv1.weight"], b["conv1.weight"]
    assert v.shape[1] == 6
    # unnamed 3-band weights are red, green, blue: red is the model's third band, scaled by 3/6
    assert torch.allclose(v[:, 2], w[:, 0] * 0.5) and torch.allclose(v[:, 0], w[:, 2] * 0.5)
    assert torch.allclose(v[:, 3], w.mean(1) * 0.5)  # nir: the mean kernel
    with pytest.raises(InputError, match="enc.pt: the model has 6 bands and the weights 3; name the model"):
        create_model("unet", 6, 4, "resnet18", weights=path)  # never silently dropped any more


def test_bad_weights_file(tmp_path: Path) -> None:
    bad = tmp_path / "w.pt"
    bad.write_text("nope")
    with pytest.raises(InputError, match="w.pt: not a PyTorch state dict"):
        create_model("unet", 3, 2, weights=bad)
    with pytest.raises(InputError, match="missing.pt: weights file not found"):
        create_model("unet", 3, 2, weights=tmp_path / "missing.pt")


@pytest.fixture
def http_dir(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A folder served over HTTP on 127.0.0.1 (no internet needed)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_weights_download_once_with_hash_check(
    http_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    from eoforge.models import cache_dir, fetch_weights

    monkeypatch.setenv("EOFORGE_CACHE", str(tmp_path / "cache"))
    root, url = http_dir
    src = create_model("unet", 3, 2, "resnet18")
    torch.save(src.encoder.state_dict(), root / "enc.pt")
    digest = hashlib.sha256((root / "enc.pt").read_bytes()).hexdigest()

    dst = create_model("unet", 3, 2, "resnet18", weights=f"{url}/enc.pt", weights_sha256=digest[:16])
    assert torch.equal(src.encoder.state_dict()["conv1.weight"], dst.encoder.state_dict()["conv1.weight"])
    cached = list(cache_dir().iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("enc.pt")

    (root / "enc.pt").unlink()  # the second use comes from the cache
    assert fetch_weights(f"{url}/enc.pt", digest) == cached[0]

    with pytest.raises(InputError, match=r"missing.pt: could not download the weights \(HTTP Error 404"):
        fetch_weights(f"{url}/missing.pt")


def test_downloaded_weights_with_a_wrong_hash_are_refused(
    http_dir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    from eoforge.models import cache_dir, fetch_weights

    monkeypatch.setenv("EOFORGE_CACHE", str(tmp_path / "cache"))
    root, url = http_dir
    (root / "w.pt").write_bytes(b"not the weights you expect")
    with pytest.raises(InputError, match="w.pt: downloaded weights fail the check"):
        fetch_weights(f"{url}/w.pt", "0" * 64)
    assert not any(cache_dir().iterdir())  # nothing half-written in the cache
    with pytest.raises(InputError, match="only http"):
        fetch_weights("ftp://example.org/w.pt")


@pytest.mark.parametrize("depth", [3, 4])
def test_encoder_depth_drops_the_deep_stages(depth: int) -> None:
    full = create_model("unet", 4, 3, "resnet18")
    model = create_model("unet", 4, 3, "resnet18", encoder_depth=depth)
    x = torch.randn(2, 4, 64, 64)
    assert model(x).shape == (2, 3, 64, 64)
    feats = model.encoder(x)
    assert len(feats) == depth + 1  # the input, then one map per stage
    assert feats[-1].shape[-1] == 64 // 2**depth  # depth 4 stops at 4 x 4 px instead of 2 x 2
    n = sum(p.numel() for p in model.parameters())
    n_full = sum(p.numel() for p in full.parameters())
    # the pruned resnet18 stages carry their weights no more: layer4 alone holds 8.4 M parameters
    assert n < n_full - 8_000_000
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())  # no unused parameter left (DDP needs none)


def test_encoder_depth_errors_name_the_model() -> None:
    with pytest.raises(
        InputError, match="'tempcnn' takes no model.encoder_depth; remove it, or use one of: .*unet"
    ):
        create_model("tempcnn", 4, 3, "t3", encoder_depth=3)
    with pytest.raises(InputError, match="model unet cannot use encoder 'resnet18' at encoder_depth"):
        create_model("unet", 4, 3, "resnet18", encoder_depth=0)
