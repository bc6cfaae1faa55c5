"""The engine's reader: one read per batch of windows, sliced, gives exactly the batches of a read per window."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import write_tif
from helpers import identity_package
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from eoforge.geo import Grid
from eoforge.predict import engine, predict
from eoforge.predict.backends import load_predictor
from eoforge.predict.blend import plan_bands
from eoforge.predict.engine import _pad_to, _row_batches, predict_scene, valid_pixels


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


def _punch(data: np.ndarray, plan, holes: int) -> None:  # type: ignore[no-untyped-def]
    """Whole windows of nodata (skipped by the reader): window i where bit i % 16 of ``holes`` is set."""
    for i, (r, c) in enumerate((r, c) for r in plan.rows for c in plan.cols):
        if holes >> (i % 16) & 1:
            data[:, r : r + plan.th, c : c + plan.tw] = np.nan


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
    _punch(data, plan, holes)
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


def test_cpu_seconds_by_part_add_up(tmp_path: Path) -> None:
    img = write_tif(
        tmp_path / "img.tif", np.random.default_rng(0).integers(0, 3, (2, 160, 200)).astype(np.float32)
    )
    res = predict(identity_package(tmp_path / "model"), [img], tmp_path / "map.tif", tile=64, overlap=16)
    cpu = res.cpu_seconds
    parts = ("setup", "reader", "blend", "writer", "model", "assemble")
    assert set(cpu) == {*parts, "total"}
    assert all(cpu[p] >= 0 for p in parts) and cpu["reader"] > 0 and cpu["model"] > 0
    # the parts split the total: only closing the source falls between them
    assert sum(cpu[p] for p in parts) == pytest.approx(cpu["total"], rel=0.05, abs=0.05)


def test_the_resume_key_probes_each_predictor_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    img = write_tif(
        tmp_path / "img.tif", np.random.default_rng(0).integers(0, 3, (2, 64, 64)).astype(np.float32)
    )
    pkg = identity_package(tmp_path / "model")
    shapes: list[tuple[int, ...]] = []
    real = engine._logits

    def counting(predictor: object, x: np.ndarray) -> object:
        shapes.append(x.shape)
        return real(predictor, x)  # type: ignore[arg-type]

    monkeypatch.setattr(engine, "_logits", counting)
    first = load_predictor(pkg, backend="torch-fp32")
    a = predict_scene(first, [img], tmp_path / "a.tif", tile=32, overlap=0)
    b = predict_scene(first, [img], tmp_path / "b.tif", tile=32, overlap=0)
    assert shapes.count((1, 2, 32, 32)) == 1  # the probe, once for this predictor
    predict_scene(load_predictor(pkg, backend="torch-fp32"), [img], tmp_path / "c.tif", tile=32, overlap=0)
    assert shapes.count((1, 2, 32, 32)) == 2  # a new predictor is probed again
    with rasterio.open(a.path) as ra, rasterio.open(b.path) as rb:
        np.testing.assert_array_equal(ra.read(), rb.read())


@settings(max_examples=30, deadline=None)
@given(
    height=st.integers(20, 200),
    width=st.integers(20, 200),
    tile=st.sampled_from([32, 64]),
    batch=st.integers(1, 4),
    readers=st.integers(2, 4),
    holes=st.integers(0, 2**16 - 1),
    seed=st.integers(0, 1000),
)
def test_parallel_readers_yield_the_single_readers_batches_in_order(
    height: int, width: int, tile: int, batch: int, readers: int, holes: int, seed: int
) -> None:
    """Several reader threads (for a GPU), each with its own source: the same items in the same order, the
    same skipped-window count, every opened source closed."""
    rng = np.random.default_rng(seed)
    data = rng.uniform(0, 1, (2, height, width)).astype(np.float32)
    plan = plan_bands(height, width, tile, tile // 4, "center")
    _punch(data, plan, holes)
    one: dict[str, int] = {"skipped": 0}
    want = list(_row_batches(ArraySource(data), plan, 0, len(plan.rows), batch, one))
    opened: list[ArraySource] = []
    closed: list[ArraySource] = []

    class Counted(ArraySource):
        def close(self) -> None:
            closed.append(self)

    def open_more() -> ArraySource:
        opened.append(Counted(data))
        return opened[-1]

    many: dict[str, int] = {"skipped": 0}
    cpu: dict[str, float] = {}
    got = list(engine._parallel_rows(open_more, plan, 0, len(plan.rows), batch, many, readers, 64, cpu))
    assert [(k, js) for k, js, _, _ in got] == [(k, js) for k, js, _, _ in want]
    for (_, _, a, m), (_, _, b, n) in zip(got, want, strict=True):
        if b is None:
            assert a is None and m is None
        else:
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(m, n)
    assert many["skipped"] == one["skipped"] and cpu["reader"] >= 0
    assert 1 <= len(opened) <= readers and sorted(map(id, closed)) == sorted(map(id, opened))


def test_a_gpu_predictor_reads_with_several_threads_and_writes_the_same_map(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine's choice of readers (several for a CUDA model) changes nothing in the outputs: maps and
    probabilities equal to a single reader's, windows skipped alike."""
    data = np.random.default_rng(0).integers(0, 3, (2, 230, 190)).astype(np.float32)
    data[:, 90:, 20:170] = np.nan  # whole windows of nodata
    img = write_tif(tmp_path / "img.tif", data, nodata=float("nan"))
    pkg = identity_package(tmp_path / "model")
    kw = {"tile": 64, "overlap": 16, "batch_size": 3}
    one = predict(pkg, [img], tmp_path / "one.tif", **kw)  # type: ignore[arg-type]
    assert engine.readers_for(load_predictor(pkg)) == 1  # a CPU model: one reader
    monkeypatch.setattr(engine, "readers_for", lambda predictor: 3)
    three = predict(pkg, [img], tmp_path / "three.tif", **kw)  # type: ignore[arg-type]
    with rasterio.open(one.path) as a, rasterio.open(three.path) as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert a.profile == b.profile
    assert three.skipped_windows == one.skipped_windows > 0
