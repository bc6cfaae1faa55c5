"""Transfer learning: fetch pretrained weights and load them into a model, adapting the first conv by band name.

Sources: a local file, an http(s) URL (downloaded once into :func:`cache_dir`) or ``hf://org/repo/path/file``
(Hugging Face hub layout, through ``huggingface_hub``'s cache, so ``HF_HUB_CACHE`` / ``HF_HUB_OFFLINE`` apply).
Files are PyTorch state dicts or safetensors. Weights may name their input bands, as TorchGeo's multispectral
weights do: a safetensors metadata entry ``bands`` (a JSON list) or a torch file ``{"state_dict": ..., "bands":
[...]}``; ``model.weights_bands`` names them otherwise. Unnamed 3-band weights are taken as ImageNet RGB.

The first convolution is rebuilt for the model's bands (:func:`adapt_conv_weight`): a band the weights know
reuses its kernel, any other band gets the mean kernel, and the whole kernel is scaled by
``weight_bands / model_bands`` so an input whose bands are all equal gives the activation it gave the original
(``timm.models.adapt_input_conv`` does the same for the RGB case).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import urllib.error
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from eoforge.errors import InputError

log = logging.getLogger(__name__)

RGB = ("red", "green", "blue")
ALIASES = {  # Sentinel-2 band ids (as TorchGeo names them) and short names -> STAC eo common names
    "b01": "coastal",
    "b1": "coastal",
    "b02": "blue",
    "b2": "blue",
    "b03": "green",
    "b3": "green",
    "b04": "red",
    "b4": "red",
    "b05": "rededge071",
    "b5": "rededge071",
    "b06": "rededge075",
    "b6": "rededge075",
    "b07": "rededge078",
    "b7": "rededge078",
    "b08": "nir",
    "b8": "nir",
    "b8a": "nir08",
    "b09": "nir09",
    "b9": "nir09",
    "b10": "cirrus",
    "b11": "swir16",
    "b12": "swir22",
    "r": "red",
    "g": "green",
    "b": "blue",
}
_PREFIXES = ("", "module.", "model.", "encoder.", "backbone.", "encoder.model.")


def cache_dir() -> Path:
    return Path(os.environ.get("EOFORGE_CACHE") or Path.home() / ".cache" / "eoforge") / "weights"


def band_key(name: str) -> str:
    """Canonical band name: lower case, Sentinel-2 ids mapped to STAC eo common names."""
    k = name.strip().lower()
    return ALIASES.get(k, k)


def fetch_weights(source: str | Path, sha256: str | None = None) -> Path:
    """A local weights file, an http(s) URL downloaded once into :func:`cache_dir`, or an ``hf://`` file."""
    text = str(source)
    if text.startswith("hf://"):
        return _fetch_hf(text, sha256)
    if "://" not in text:
        path = Path(text)
        if not path.is_file():
            raise InputError(f"{path}: weights file not found; check model.weights")
        _check_hash(path, sha256, text)
        return path
    if not text.startswith(("http://", "https://")):
        raise InputError(
            f"{text}: only http(s) URLs, hf://org/repo/file or local files are supported for model.weights"
        )
    name = Path(urllib.parse.urlparse(text).path).name or "weights.pt"
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    target = cache_dir() / f"{key}-{name}"
    if target.is_file() and (not sha256 or sha256_of(target).startswith(sha256.lower())):
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


def _fetch_hf(text: str, sha256: str | None) -> Path:
    """``hf://org/repo/path/file[@revision]`` through the Hugging Face hub cache (downloaded once)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    spec, _, revision = text[len("hf://") :].partition("@")
    parts = spec.split("/")
    if len(parts) < 3 or not all(parts):
        raise InputError(f"{text}: expected hf://ORG/REPO/PATH/TO/FILE for model.weights")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        path = Path(hf_hub_download(repo, filename, revision=revision or None))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as exc:
        raise InputError(
            f"{text}: weights file not found in the Hugging Face cache or hub ({str(exc).splitlines()[0][:160]}); "
            "check the repository and file name, or put the file in HF_HUB_CACHE"
        ) from None
    # the hub stores large files as blobs named by their SHA-256: check the content against the name
    blob = path.resolve()
    if re.fullmatch(r"[0-9a-f]{64}", blob.name) and sha256_of(blob) != blob.name:
        raise InputError(f"{text}: cached file {blob} is corrupt (SHA-256 differs from its name); delete it")
    _check_hash(path, sha256, text)
    return path


def _check_hash(path: Path, sha256: str | None, label: str) -> None:
    if sha256 and not sha256_of(path).startswith(sha256.lower()):
        raise InputError(f"{label}: SHA-256 differs from model.weights_sha256 {sha256}; check the file")


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str] | None]:
    """A weights file's state dict and the band names it declares (None when it names none)."""
    path = Path(path)
    bands: object = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
                meta = f.metadata() or {}
        except Exception as exc:
            raise InputError(f"{path}: not a safetensors file ({str(exc).splitlines()[0]})") from None
        if "bands" in meta:
            try:
                bands = json.loads(meta["bands"])
            except ValueError:
                bands = meta["bands"].split(",")
    else:
        try:
            raw = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise InputError(f"{path}: not a PyTorch state dict ({str(exc).splitlines()[0]})") from None
        if isinstance(raw, dict) and "state_dict" in raw:
            bands = raw.get("bands") or (raw.get("meta") or {}).get("bands")
            raw = raw["state_dict"]
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise InputError(
                f"{path}: expected a state dict (name -> tensor); save one with torch.save(m.state_dict())"
            )
        state = raw
    if bands is not None and not (isinstance(bands, list | tuple) and all(isinstance(b, str) for b in bands)):
        raise InputError(f"{path}: 'bands' metadata must be a list of band names, got {bands!r}")
    return state, list(bands) if bands is not None else None


def adapt_conv_weight(
    weight: torch.Tensor, weight_bands: Sequence[str], bands: Sequence[str]
) -> tuple[torch.Tensor, list[str]]:
    """First-conv kernel ``(O, len(weight_bands), kh, kw)`` rebuilt for ``bands``; also the reused band names.

    Known bands reuse their kernel, others get the mean kernel; everything is scaled by
    ``len(weight_bands) / len(bands)``, so with every weight band present a constant input across bands gives
    the original activation, and the response to the known bands alone keeps its shape (scaled).
    """
    if weight.shape[1] != len(weight_bands):
        raise InputError(
            f"weights' first convolution takes {weight.shape[1]} bands but names {len(weight_bands)} "
            f"({', '.join(weight_bands)}); fix model.weights_bands"
        )
    index = {band_key(b): i for i, b in enumerate(weight_bands)}
    mean = weight.mean(dim=1)
    kernels, reused = [], []
    for b in bands:
        i = index.get(band_key(b))
        kernels.append(weight[:, i] if i is not None else mean)
        if i is not None:
            reused.append(b)
    out = torch.stack(kernels, dim=1) * (len(weight_bands) / len(bands))
    return out.to(weight.dtype), reused


def first_conv(module: nn.Module, in_channels: int) -> str | None:
    """State-dict key of the first convolution taking ``in_channels`` inputs (the one to adapt)."""
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d) and m.in_channels == in_channels:
            return f"{name}.weight" if name else "weight"
    return None


def load_weights(
    model: nn.Module,
    path: str | Path,
    bands: Sequence[str] | None = None,
    weights_bands: Sequence[str] | None = None,
) -> None:
    """Load pretrained weights into ``model`` (the whole model or its encoder), adapting the first conv.

    ``bands`` names the model's input bands (default: the weights' own bands when the counts agree).
    Tensors of the class head whose shape differs (other classes) are skipped with a log line; any other
    mismatch, or a first convolution that cannot be adapted, is an :class:`InputError`.
    """
    path = Path(path)
    state, declared = read_weights(path)
    target, state = _match_target(model, state, path)
    own = target.state_dict()
    in_ch = _in_channels(model)
    conv_key = first_conv(target, in_ch) if in_ch else None
    names = list(weights_bands or declared or ())
    reorder = (
        bool(names) and bands is not None and [band_key(b) for b in names] != [band_key(b) for b in bands]
    )
    if (
        conv_key is not None
        and conv_key in state
        and (state[conv_key].shape != own[conv_key].shape or reorder)
    ):
        w = state[conv_key]
        if not names:
            if w.shape[1] != 3:
                raise InputError(
                    f"{path}: weights take {w.shape[1]} bands but do not name them; set model.weights_bands"
                )
            names = list(RGB)
            log.info("%s: weights name no bands; taking their 3 input bands as red, green, blue", path)
        if bands is None or len(bands) != in_ch:
            raise InputError(
                f"{path}: the model has {in_ch} bands and the weights {w.shape[1]}; name the model's bands "
                "(inputs.bands) so the first convolution can be adapted"
            )
        state = dict(state)
        state[conv_key], reused = adapt_conv_weight(w, names, bands)
        new = [b for b in bands if b not in reused]
        log.info(
            "%s: first convolution adapted by band name: reused %s, mean kernel for %s",
            path,
            reused or "none",
            new or "none",
        )
        if not reused:
            log.warning("%s: no band of the model is one of the weights' bands (%s)", path, ", ".join(names))
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    mismatched = [k for k in state if k in own and own[k].shape != state[k].shape]
    bad = [k for k in mismatched if not _is_head(k)]
    if bad:
        raise InputError(
            f"{path}: tensors {', '.join(bad[:3])} have other shapes than model {type(model).__name__} "
            f"({tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); use weights of this architecture "
            "and encoder"
        )
    if not usable:
        raise InputError(f"{path}: no tensor in this file matches the model '{type(model).__name__}'")
    target.load_state_dict(usable, strict=False)
    if mismatched:
        log.info("%s: class head not loaded (other classes): %s", path, ", ".join(mismatched))
    log.info("loaded %d of %d tensors from %s", len(usable), len(own), path)


def _is_head(key: str) -> bool:
    return key.startswith(
        ("segmentation_head.", "classification_head.", "score", "head.", "fc.", "classifier.")
    )


def _in_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Conv3d):
            return int(m.in_channels)
    return None


def _match_target(
    model: nn.Module, state: dict[str, torch.Tensor], path: Path
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The module (model, its encoder, a timm encoder's inner model) and key prefix the file fits best."""
    candidates: list[nn.Module] = [model]
    enc = getattr(model, "encoder", None)
    if isinstance(enc, nn.Module):
        candidates.append(enc)
        inner = getattr(enc, "model", None)
        if isinstance(inner, nn.Module):
            candidates.append(inner)
    best: tuple[int, nn.Module, dict[str, torch.Tensor]] = (0, model, state)
    for module in candidates:
        own = module.state_dict()
        for prefix in _PREFIXES:
            keyed = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            hits = sum(k in own for k in keyed)
            if hits > best[0]:
                best = (hits, module, keyed)
    if best[0] == 0:
        raise InputError(f"{path}: no tensor in this file matches the model '{type(model).__name__}'")
    return best[1], best[2]
