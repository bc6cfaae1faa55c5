"""The engine's reader: one read per batch of windows, sliced, gives exactly the batches of a read per window."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from eoforge.geo import Grid
from eoforge.predict.blend import plan_bands
from eoforge.predict.engine import _pad_to, _row_batches, valid_pixels


class ArraySource:
    """An in-memory source that counts its reads (``grid`` is unused by the reader)."""

    def __init__(self, data: np.ndarray) -> None:
        self.data, self.count, self.reads = data, data.shape[0], 0
        self.grid: Grid | None = None

    def read(self, window: Window | None = None) -> np.ndarray:
        assert window is not None
        self.reads += 1
        r, c, h, w = int(window.row_off), int(window.col_off), int(window.height), int(window.width)
        if r < 0 or c < 0 or r + h > self.data.shape[1] or c + w > self.data.shape[2]:
            raise ValueError(f"window {window} outside the raster")
        return self.data[:, r : r + h, c : c + w].copy()

    def close(self) -> None:
        pass


def _reference(data: np.ndarray, plan, k0: int, k1: int, batch: int) -> list:  # type: ignore[no-untyped-def]
    """Batches as the engine made them before: one read per window, empty windows skipped."""
    ph, pw = -(-plan.th // 32) * 32, -(-plan.tw // 32) * 32
    out = []
    for k in range(k0, k1):
        js, arrays = [], []
        for j, c in enumerate(plan.cols):
            a = data[:, plan.rows[k] : plan.rows[k] + plan.th, c : c + plan.tw]
            if not valid_pixels(a).any():
                continue
            js.append(j)
            arrays.append(_pad_to(a, ph, pw))
            if len(js) == batch:
                out.append((k, js, np.stack(arrays)))
                js, arrays = [], []
        if js:
            out.append((k, js, np.stack(arrays)))
        out.append((k, [], None))
    return out


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(20, 200),
    width=st.integers(20, 330),
    tile=st.sampled_from([32, 64, 96]),
    overlap_frac=st.floats(0, 0.5),
    batch=st.integers(1, 5),
    holes=st.integers(0, 2**16 - 1),
    seed=st.integers(0, 1000),
)
def test_chunked_reads_equal_window_reads(
    height: int, width: int, tile: int, overlap_frac: float, batch: int, holes: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    data = rng.uniform(0, 1, (3, height, width)).astype(np.float32)
    overlap = min(tile - 1, int(overlap_frac * tile))
    plan = plan_bands(height, width, tile, overlap, "center")
    for i, (r, c) in enumerate((r, c) for r in plan.rows for c in plan.cols):
        if holes >> (i % 16) & 1:  # whole windows of nodata, skipped by the reader
            data[:, r : r + plan.th, c : c + plan.tw] = np.nan
    source = ArraySource(data)
    k0 = len(plan.rows) // 3
    got = list(_row_batches(source, plan, k0, len(plan.rows), batch, {"skipped": 0}))
    want = _reference(data, plan, k0, len(plan.rows), batch)
    assert [(k, js) for k, js, _, _ in got] == [(k, js) for k, js, _ in want]
    for (_, _, a, m), (_, _, b) in zip(got, want, strict=True):
        if b is None:
            assert a is None and m is None
        else:
            assert a is not None and m is not None
            np.testing.assert_array_equal(a, b)  # NaN equal NaN
            np.testing.assert_array_equal(m, valid_pixels(b))
    # one read per batch_size windows of a row (not per window)
    per_row = -(-len(plan.cols) // batch)
    assert source.reads == per_row * (len(plan.rows) - k0)
