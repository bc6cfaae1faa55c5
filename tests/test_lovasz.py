"""The sort-free Lovász-softmax loss against segmentation-models-pytorch's sorted one."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from segmentation_models_pytorch.losses import LovaszLoss

from eoforge.config import IGNORE_INDEX, TrainConfig
from eoforge.train.losses import LovaszSoftmax, make_loss


def _both(
    logits: torch.Tensor, target: torch.Tensor, bins: int
) -> tuple[float, float, torch.Tensor, torch.Tensor]:
    ref = LovaszLoss("multiclass", ignore_index=IGNORE_INDEX)
    ours = LovaszSoftmax(ignore_index=IGNORE_INDEX, bins=bins)
    x1 = logits.clone().requires_grad_()
    x2 = logits.clone().requires_grad_()
    a, b = ref(x1, target), ours(x2, target)
    a.backward()
    b.backward()
    assert x1.grad is not None and x2.grad is not None
    return float(a), float(b), x1.grad, x2.grad


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 3),
    c=st.integers(2, 6),
    side=st.integers(1, 9),
    scale=st.sampled_from([0.1, 1.0, 5.0]),
    ignored=st.floats(0.0, 0.9),
    bins=st.sampled_from([2, 3, 8, 64, 4096]),
)
def test_value_within_one_level_of_the_sorted_loss(
    seed: int, n: int, c: int, side: int, scale: float, ignored: float, bins: int
) -> None:
    """Whatever the shapes, the labels (some ignored) and the number of levels: the value is the sorted
    loss's within 1 / (bins - 1) (errors within a level differ by less; the Jaccard steps add up to <= 1)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, side, side, generator=g) * scale
    target = torch.randint(0, c, (n, side, side), generator=g)
    target[torch.rand(n, side, side, generator=g) < ignored] = IGNORE_INDEX
    assume(bool((target != IGNORE_INDEX).any()))  # smp's loss cannot backward through no pixel at all
    a, b, _, _ = _both(logits, target, bins)
    assert abs(a - b) <= 1.0 / (bins - 1) + 1e-5, (a, b)


@pytest.mark.parametrize("scale", [0.3, 2.0, 8.0])
def test_gradient_matches_the_sorted_loss_at_the_default_levels(scale: float) -> None:
    """A demo-sized batch (16 x 7 classes x 64²), an absent class and ignored rows: same value to float
    precision and the same gradient pixel by pixel (within 1 % of its largest entry)."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 7, 64, 64, generator=g) * scale
    target = torch.randint(0, 7, (16, 64, 64), generator=g)
    target[target == 6] = 3  # class 6 absent: left out of the mean, as smp's 'present' classes
    target[:, :5] = IGNORE_INDEX
    a, b, ga, gb = _both(logits, target, 4096)
    assert b == pytest.approx(a, abs=1e-5)
    assert torch.allclose(gb, ga, atol=0.01 * float(ga.abs().max()), rtol=0)
    assert float(torch.nn.functional.cosine_similarity(ga.flatten(), gb.flatten(), dim=0)) > 0.9999


def test_no_labelled_pixel_gives_zero_and_no_gradient() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE_INDEX)
    loss = LovaszSoftmax()(logits, target)
    loss.backward()
    assert float(loss) == 0.0 and logits.grad is not None and not logits.grad.any()


def test_a_perfect_prediction_costs_nothing_and_the_loss_is_what_training_uses() -> None:
    target = torch.randint(0, 4, (2, 8, 8))
    logits = torch.nn.functional.one_hot(target, 4).permute(0, 3, 1, 2).float() * 50
    assert float(LovaszSoftmax()(logits, target)) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="bins must be at least 2"):
        LovaszSoftmax(bins=1)
    loss = make_loss(TrainConfig(loss="lovasz", class_weights=None))
    assert isinstance(loss.inner, LovaszSoftmax)  # type: ignore[union-attr]
