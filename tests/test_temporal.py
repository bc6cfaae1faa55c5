"""Temporal and pixel models: layout, pixel independence, and two phenologies only timing tells apart."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import eoforge.temporal.models  # noqa: F401  (registers the models)
from eoforge.errors import InputError
from eoforge.models import create_model, list_models
from eoforge.temporal.fit import evaluate_series, random_forest, train_series
from eoforge.temporal.models import parse_spec
from eoforge.temporal.series import PixelSeries

T = 12


def phenologies(n: int, seed: int = 0) -> PixelSeries:
    """Class 0 greens up slowly and browns fast (rising sawtooth), class 1 the reverse, each with a random
    phase over the whole year: at every single date both classes have the same distribution of values (and
    the same mean), so only the order of the dates separates them."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    phase = rng.integers(0, T, n)
    ramp = ((np.arange(T)[None, :] + phase[:, None]) % T) / (T - 1)
    values = np.where(labels[:, None] == 0, ramp, 1 - ramp) + rng.normal(0, 0.05, (n, T))
    values = values.astype(np.float32)[:, :, None]
    dates = np.arange("2020-01", "2021-01", dtype="datetime64[M]").astype("datetime64[D]")
    return PixelSeries(
        np.arange(n), values, labels, ("slow-up", "fast-up"), ("ndvi",), np.tile(dates, (n, 1))
    )


def test_registered_and_pixelwise() -> None:
    assert {"tempcnn", "ltae", "pixel-mlp", "pixel-cnn"} <= set(list_models())
    for name in ("tempcnn", "ltae", "pixel-mlp"):
        m = create_model(name, 3 * 4, 5, "t4").eval()
        x = torch.randn(2, 12, 6, 5)
        y = m(x)
        assert y.shape == (2, 5, 6, 5)
        x2 = x.clone()
        x2[:, :, 2, 3] += 3.0
        diff = (m(x2) - y).abs().amax(dim=(0, 1))
        assert diff[2, 3] > 0
        diff[2, 3] = 0
        assert float(diff.max()) == 0.0  # a per-pixel model: other pixels are untouched
    cnn = create_model("pixel-cnn", 4, 3, "w8").eval()
    x = torch.randn(1, 4, 16, 16)
    x2 = x.clone()
    x2[:, :, 8, 8] += 3
    changed = (cnn(x2) - cnn(x)).abs().amax(dim=(0, 1)) > 0
    rows, cols = np.nonzero(changed.numpy())
    assert rows.min() >= 5 and rows.max() <= 11 and cols.min() >= 5 and cols.max() <= 11  # 3 layers of 3x3


def test_layout_spec() -> None:
    assert parse_spec("t4", 12).n_bands == 3
    assert parse_spec("t4-w32", 12).width == 32
    assert parse_spec("resnet18", 7).n_times == 7
    with pytest.raises(InputError, match="not a whole number of bands"):
        parse_spec("t5", 12)
    with pytest.raises(InputError, match="expects 4 dates"):
        create_model("ltae", 12, 2, "t4")(torch.zeros(1, 8, 2, 2))


@pytest.mark.parametrize("arch", ["tempcnn", "ltae"])
def test_temporal_models_separate_phenologies_single_date_cannot(arch: str) -> None:
    data = phenologies(400)
    train, test = np.arange(280), np.arange(280, 400)
    fitted = train_series(data, train, arch=arch, epochs=25, batch_size=32, lr=3e-3)
    temporal = evaluate_series(fitted, data, test)
    # the same series seen one date at a time: a pixel model per date (the best date is taken)
    best_single = 0.0
    for t in (0, 5):
        one = PixelSeries(
            data.ids,
            data.values[:, t : t + 1],
            data.labels,
            data.classes,
            data.bands,
            data.dates[:, t : t + 1],
        )
        best_single = max(best_single, random_forest(one, train, test, n_estimators=100).accuracy)
    assert temporal.accuracy > 0.9, temporal
    assert best_single < 0.7, best_single


def test_narrow_ltae_embeddings_are_not_degenerate() -> None:
    """With one channel per head the output GroupNorm mapped every embedding to 0 (``w16``, 16 heads): narrow
    L-TAEs now get fewer heads of >= 4 channels, and different series get different embeddings."""
    from eoforge.temporal.models import LTAE, ltae_heads

    assert [ltae_heads(d) for d in (8, 16, 18, 32, 64, 128, 256)] == [2, 4, 3, 8, 16, 16, 16]
    torch.manual_seed(0)
    model = create_model("ltae", 4, 2, "t4-w16")
    assert isinstance(model, LTAE) and model.n_head == 4
    z, attn = model.eval().encode(torch.randn(64, 4, 1))
    assert float(z.std(0).min()) > 0.01  # every embedding channel varies over the pixels (was 0)
    assert torch.allclose(attn.sum(-1), torch.ones(64, 4))


def test_narrow_ltae_learns_phenologies_in_a_tiny_run() -> None:
    """The tiny-run setting that failed (a narrow L-TAE, few epochs): it now separates the phenologies."""
    data = phenologies(240, seed=1)
    train, test = np.arange(160), np.arange(160, 240)
    fitted = train_series(data, train, arch="ltae", encoder="t12-w32", epochs=8, batch_size=32, lr=1e-2)
    assert fitted.model.n_head == 8  # type: ignore[union-attr]
    assert evaluate_series(fitted, data, test).accuracy > 0.9
