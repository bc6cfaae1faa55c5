"""Blending math and the row-band engine, on in-memory sources (no files): hypothesis over sizes and modes."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from helpers import PickBand0
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from eoforge.geo import Grid, overlap_tiles
from eoforge.package import ClassInfo, PackageMeta, Predictor
from eoforge.predict.blend import BLENDS, axis_weights, plan_bands, taper
from eoforge.predict.engine import PredictOptions, _Job, run_bands, valid_pixels

sizes = st.integers(1, 300)
tiles = st.sampled_from([32, 64, 96])
blends = st.sampled_from(BLENDS)


def _place(h: int, w: int, tile: int, overlap: int, blend: str) -> np.ndarray:
    """Sum over windows of each window's 2-D weight placed on the scene."""
    plan = plan_bands(h, w, tile, overlap, blend)
    total = np.zeros((h, w), np.float64)
    for r, wr in zip(plan.rows, plan.row_weights, strict=True):
        for c, wc in zip(plan.cols, plan.col_weights, strict=True):
            total[r : r + plan.th, c : c + plan.tw] += np.outer(wr, wc)
    return total


@settings(max_examples=60, deadline=None)
@given(h=sizes, w=sizes, tile=tiles, frac=st.floats(0, 0.9), blend=blends)
def test_weights_sum_to_one_on_every_pixel(h: int, w: int, tile: int, frac: float, blend: str) -> None:
    overlap = min(int(frac * tile), tile - 1)
    np.testing.assert_allclose(_place(h, w, tile, overlap, blend), 1.0, rtol=0, atol=2e-6)


@settings(max_examples=60, deadline=None)
@given(n=sizes, tile=tiles, frac=st.floats(0, 0.9))
def test_center_weights_are_the_kept_cores(n: int, tile: int, frac: float) -> None:
    overlap = min(int(frac * tile), tile - 1)
    plan = plan_bands(n, n, tile, overlap, "center")
    cores = [t.core for t in overlap_tiles(n, n, tile, overlap)][: len(plan.cols)]
    for c, w, core in zip(plan.cols, plan.col_weights, cores, strict=True):
        ones = np.flatnonzero(w) + c
        assert (w[w > 0] == 1.0).all()
        assert (ones[0], ones[-1] + 1) == (core.col_off, core.col_off + core.width)


@settings(max_examples=60, deadline=None)
@given(n=sizes, tile=tiles, frac=st.floats(0, 0.9), blend=blends)
def test_a_band_is_final_once_its_window_row_ran(n: int, tile: int, frac: float, blend: str) -> None:
    overlap = min(int(frac * tile), tile - 1)
    plan = plan_bands(n, 7, tile, overlap, blend)
    assert plan.bounds[0] == 0 and plan.bounds[-1] == n
    assert all(a < b for a, b in zip(plan.bounds, plan.bounds[1:], strict=False))
    for k in range(plan.n_bands):
        later = plan.extent[k + 1 :]
        assert all(lo >= plan.bounds[k + 1] for lo, _ in later)  # no later window row touches band k
        first = plan.first_window_row(k)
        assert plan.extent[first][1] > plan.bounds[k] and all(
            hi <= plan.bounds[k] for _, hi in plan.extent[:first]
        )
        # the buffer of th rows from the band start holds every window row that touches the band
        assert all(hi - plan.bounds[k] <= plan.th for _, hi in plan.extent[first : k + 1])


def test_tapers_are_positive_and_peak_in_the_middle() -> None:
    for mode in ("hann", "triangular"):
        t = taper(64, mode)
        assert (t > 0).all() and t.argmax() in (31, 32) and np.allclose(t, t[::-1])
    with pytest.raises(ValueError, match="unknown taper"):
        taper(8, "gauss")
    assert [w.tolist() for w in axis_weights([0], 4, 4, "hann")] == [[1.0] * 4]


class ArraySource:
    """An in-memory source with the RasterStack interface."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.count = data.shape[0]
        self.grid = Grid("EPSG:32633", Affine(10, 0, 0, 0, -10, 0), data.shape[1], data.shape[2])
        self.reads = 0

    def read(self, window: Window | None = None) -> np.ndarray:
        self.reads += 1
        assert window is not None
        r, c = int(window.row_off), int(window.col_off)
        return self.data[:, r : r + int(window.height), c : c + int(window.width)].copy()

    def close(self) -> None:
        pass


def _predictor(bands: int = 2) -> Predictor:
    meta = PackageMeta(
        arch="test-pick-band0",
        encoder="none",
        bands=[f"b{i}" for i in range(bands)],
        mean=[0.0] * bands,
        std=[1.0] * bands,
        nodata=None,
        chip_size=32,
        classes=[ClassInfo(c, f"c{c}", "#000000") for c in (10, 20, 30)],
        tile=64,
        overlap=16,
    )
    return Predictor(PickBand0(bands, 3), meta)


PRED = _predictor()


def _scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 3, (h, w))
    data = np.stack([idx.astype(np.float32), rng.random((h, w), dtype=np.float32)])
    data[:, : h // 4, : w // 5] = np.nan  # a nodata corner (all bands)
    data[1, h // 2 :, :] = np.nan  # one band missing: still a valid pixel
    expected = np.array([10, 20, 30], np.uint8)[idx]
    expected[: h // 4, : w // 5] = 255
    return data, expected


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 140),
    w=st.integers(1, 140),
    tile=st.sampled_from([32, 64]),
    frac=st.floats(0, 0.8),
    blend=blends,
    seed=st.integers(0, 1000),
)
def test_identity_model_reproduces_the_input_across_seams(
    h: int, w: int, tile: int, frac: float, blend: str, seed: int
) -> None:
    overlap = min(int(frac * tile), tile - 1)
    data, expected = _scene(h, w, seed)
    job = _Job(
        h, w, tile, overlap, PredictOptions(blend=blend, batch_size=3, probabilities="float32"), (10, 20, 30)
    )
    bands = list(run_bands(PRED, ArraySource(data), job, 0, job.plan.n_bands))
    out = np.concatenate([b.classes for b in bands])
    np.testing.assert_array_equal(out, expected)
    probs = np.concatenate([b.probs for b in bands if b.probs is not None], axis=1)
    assert np.isnan(probs[:, expected == 255]).all()
    np.testing.assert_allclose(probs[:, expected != 255].sum(axis=0), 1.0, atol=1e-5)


@pytest.mark.parametrize("blend", BLENDS)
def test_a_run_from_any_band_equals_the_full_run(blend: str) -> None:
    data, _ = _scene(200, 90, 7)
    job = _Job(200, 90, 64, 40, PredictOptions(blend=blend, uncertainty="entropy"), (10, 20, 30))
    src = ArraySource(data)
    full = list(run_bands(PRED, src, job, 0, job.plan.n_bands))
    for j0 in range(1, job.plan.n_bands):
        part = list(run_bands(PRED, src, job, j0, job.plan.n_bands))
        for a, b in zip(full[j0:], part, strict=True):
            assert a.index == b.index and a.row0 == b.row0
            np.testing.assert_array_equal(a.classes, b.classes)
            np.testing.assert_array_equal(a.uncertainty, b.uncertainty)


def test_windows_entirely_nodata_are_not_read_into_the_model() -> None:
    data, expected = _scene(128, 128, 3)
    data[:, :64, :] = np.nan
    expected[:64, :] = 255
    stats: dict[str, int] = {}
    job = _Job(128, 128, 32, 0, PredictOptions(), (10, 20, 30))
    out = np.concatenate([b.classes for b in run_bands(PRED, ArraySource(data), job, 0, 4, stats)])
    np.testing.assert_array_equal(out, expected)
    assert stats["skipped"] == 8  # 2 of 4 window rows x 4 columns


def test_nodata_is_where_all_bands_are_nan() -> None:
    x = np.array([[[np.nan, 1.0, np.nan]], [[np.nan, np.nan, 2.0]]], np.float32)
    assert valid_pixels(x).tolist() == [[False, True, True]]


@pytest.mark.parametrize(("h", "w", "blend"), [(20, 100, "center"), (70, 45, "hann"), (33, 33, "triangular")])
def test_tta_d4_keeps_an_equivariant_model_exact(h: int, w: int, blend: str) -> None:
    data, expected = _scene(h, w, 11)
    job = _Job(h, w, 64, 16, PredictOptions(blend=blend, tta="d4", uncertainty="max-prob"), (10, 20, 30))
    bands = list(run_bands(PRED, ArraySource(data), job, 0, job.plan.n_bands))
    np.testing.assert_array_equal(np.concatenate([b.classes for b in bands]), expected)
    unc = np.concatenate([b.uncertainty for b in bands if b.uncertainty is not None])
    assert np.isnan(unc[expected == 255]).all() and (unc[expected != 255] < 0.5).all()
