"""Evaluation scores the delivered map on the test pixels; baselines on the same pixels; honest averages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from conftest import CRS, TRANSFORM, write_tif
from helpers import package_for
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
)

from eoforge.chips import make_chips
from eoforge.config import ChipsConfig, EvaluateConfig, IndexRule, InputsConfig, MapBaseline, parse_config
from eoforge.evaluate.metrics import bootstrap_intervals, metrics_from_confusion
from eoforge.evaluate.scoring import BlockConfusion, evaluate
from eoforge.evaluate.warnings import conclusion_warnings
from eoforge.package import load_package
from eoforge.predict import predict
from eoforge.prepare import prepare

CLASSES = {10: "water", 20: "forest", 30: "field"}


def _bands() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Classes of 80 x 40 px patches, band 0 = class + noise, red/nir with a high NDVI on forest."""
    rng = np.random.default_rng(1)
    cls = (np.add.outer(np.arange(160) // 80, np.arange(160) // 40) % 3).astype(np.uint8)
    b0 = cls + rng.normal(0, 0.3, cls.shape)
    red = np.where(cls == 1, 0.05, 0.2) + rng.normal(0, 0.02, cls.shape)
    nir = np.where(cls == 1, 0.5, 0.15) + rng.normal(0, 0.02, cls.shape)
    return cls, b0, red, nir


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """160 x 160 px: band 0 holds the class index plus noise (so band-0 models classify), band 'nir' and 'red'
    make NDVI high on forest; labels are a raster of patches; chips 32 px in 32-px blocks."""
    d = tmp_path_factory.mktemp("scoring")
    cls, b0, red, nir = _bands()
    img = write_tif(d / "img.tif", np.stack([b0, red, nir]).astype(np.float32))
    labels = np.array([10, 20, 30], np.uint8)[cls]
    labels[:8, :] = 0  # unlabelled strip
    lab = write_tif(d / "labels.tif", labels, nodata=0)
    scene, store = _prepare_and_chip(img, lab, d / "run")
    return {"dir": d, "scene": scene, "store": store}


def _prepare_and_chip(img: Path, lab: Path, run: Path) -> tuple[Any, Any]:
    """prepare (bands b0, red, nir) and chips of 32 px in 32-px blocks (val 0.2, test 0.3)."""
    inputs = InputsConfig.model_validate(
        {
            "images": [str(img)],
            "bands": ["b0", "red", "nir"],
            "labels": {"path": str(lab)},
            "classes": CLASSES,
        }
    )
    scene = prepare(inputs, run)
    split = {"val": 0.2, "test": 0.3, "block_size": 32}
    chips = ChipsConfig.model_validate({"size": 32, "stride": 32, "split": split})
    return scene, make_chips(scene, chips, run)


def _run_eval(
    prepared: dict, tile: int, arch: str = "test-window-mean", cfg: EvaluateConfig | None = None
) -> tuple[dict, Path]:
    d = prepared["dir"]
    out = d / f"eval-{arch}-{tile}"
    pkg = package_for(
        out / "model", arch, ["b0", "red", "nir"], CLASSES, tile=tile, overlap=0 if tile == 32 else 16
    )
    predict(pkg, [d / "img.tif"], out / "map.tif")
    metrics = evaluate(
        load_package(pkg),
        prepared["store"],
        prepared["scene"],
        out / "map.tif",
        out,
        cfg=cfg or EvaluateConfig(bootstrap=200),
    )
    return metrics, out


def test_metrics_are_those_of_the_delivered_map_for_any_window(prepared: dict) -> None:
    cms = []
    for tile in (32, 64, 128):
        metrics, out = _run_eval(prepared, tile)
        with rasterio.open(out / "map.tif") as m, rasterio.open(out / "eval" / "test_pixels.tif") as t:
            pred, ref = m.read(1), t.read(1)
            assert t.crs.to_string() == CRS and t.transform == TRANSFORM
        scored = ref != t.nodata
        by_hand = confusion_matrix(ref[scored], pred[scored], labels=list(CLASSES))
        assert metrics["confusion_matrix"] == by_hand.tolist()  # exact, on the same pixels
        assert metrics["kappa"] == pytest.approx(cohen_kappa_score(ref[scored], pred[scored]))
        assert metrics["pixels"] == int(scored.sum())
        cms.append(by_hand.tolist())
    assert len({json.dumps(c) for c in cms}) > 1  # the window changes the map, and the numbers follow it


def test_eval_rasters_mark_test_pixels_and_block_splits(prepared: dict) -> None:
    metrics, out = _run_eval(prepared, 64, arch="test-pick-band0")
    idx = prepared["store"].index()
    with (
        rasterio.open(out / "eval" / "splits.tif") as s,
        rasterio.open(out / "eval" / "test_pixels.tif") as t,
    ):
        splits, ref = s.read(1), t.read(1)
        assert s.transform == TRANSFORM and s.shape == (160, 160)
    with rasterio.open(prepared["scene"].labels) as lab:
        labels = lab.read(1)
    code = {"train": 1, "val": 2, "test": 3}
    test_cover = np.zeros(splits.shape, bool)
    for r, c, s in zip(idx["row"], idx["col"], idx["split"], strict=True):
        assert (splits[r : r + 32, c : c + 32] == code[s]).all()
        if s == "test":
            test_cover[r : r + 32, c : c + 32] = True
    expect = test_cover & (labels != 255)
    assert ((ref != 255) == expect).all()
    assert (np.array([10, 20, 30])[labels[expect]] == ref[expect]).all()
    assert metrics["test_blocks"] == len(idx[idx["split"] == "test"])  # one 32-px chip per 32-px block


def test_baselines_are_scored_on_the_same_pixels(prepared: dict) -> None:
    first, out = _run_eval(prepared, 64, arch="test-pick-band0")
    reference_map = out / "eval" / "test_pixels.tif"  # a "map" equal to the reference where it is scored
    cfg = EvaluateConfig(
        bootstrap=100,
        baselines=[
            MapBaseline(map=reference_map, name="perfect"),
            IndexRule.model_validate({"index": "NDVI", "above": 0.3, "then": "forest", "else": "water"}),
        ],
    )
    metrics, _ = _run_eval(prepared, 64, arch="test-pick-band0", cfg=cfg)
    by_name = {b["name"]: b for b in metrics["baselines"]}
    assert set(by_name) == {"majority class (water)", "random forest", "perfect", "NDVI > 0.3"} or set(
        by_name
    ) >= {"random forest", "perfect", "NDVI > 0.3"}
    for b in metrics["baselines"]:
        assert b["pixels"] == metrics["pixels"]
    assert by_name["perfect"]["overall_accuracy"] == 1.0 and by_name["perfect"]["kappa"] == 1.0
    ndvi = by_name["NDVI > 0.3"]
    per = ndvi["per_class"]
    assert per["forest"]["recall"] > 0.99 and per["field"]["predicted"] == 0  # the rule never says field
    majority = next(b for b in metrics["baselines"] if b["kind"] == "majority")
    assert majority["kappa"] == pytest.approx(0.0)
    assert first["confusion_matrix"] == metrics["confusion_matrix"]
    warn_codes = {w["code"] for w in metrics["warnings"]}
    assert "baseline_better" in warn_codes  # the perfect map beats the model


def test_unknown_index_and_rule_classes_are_config_errors() -> None:
    base = {"inputs": {"images": ["a.tif"], "labels": {"path": "l.tif"}, "classes": {1: "water", 2: "land"}}}
    with pytest.raises(ValueError, match="unknown spectral index 'NDVII'.*NDVI"):
        parse_config(
            {**base, "evaluate": {"baselines": [{"index": "NDVII", "above": 0, "then": 1, "else": 2}]}}
        )
    with pytest.raises(ValueError, match="then 'sea' is not a class"):
        parse_config(
            {**base, "evaluate": {"baselines": [{"index": "MNDWI", "above": 0, "then": "sea", "else": 2}]}}
        )


def test_metrics_match_scikit_learn_and_skip_absent_classes() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 4000)  # class 3 ('d') has no reference pixel
    p = np.where(rng.random(4000) < 0.7, y, rng.integers(0, 4, 4000))
    m = metrics_from_confusion(confusion_matrix(y, p, labels=range(4)), list("abcd"), [1, 2, 3, 4])
    present = [0, 1, 2]
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, labels=present, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, p, labels=present, average="weighted"))
    assert m["mean_iou"] == pytest.approx(jaccard_score(y, p, labels=present, average="macro"))
    assert m["classes_absent"] == ["d"]
    assert m["per_class"]["d"]["iou"] is None and m["per_class"]["d"]["f1"] is None
    assert m["per_class"]["d"]["predicted"] > 0


def test_absent_class_is_treated_alike_for_every_model() -> None:
    # two practically identical models; class 'c' is absent from the reference; one predicts it on 1 pixel
    a = np.array([[50, 0, 0], [0, 50, 0], [0, 0, 0]])
    b = np.array([[49, 0, 1], [0, 50, 0], [0, 0, 0]])
    ma, mb = (metrics_from_confusion(x, list("abc"), [1, 2, 3]) for x in (a, b))
    assert ma["mean_iou"] == 1.0 and mb["mean_iou"] == pytest.approx((49 / 50 + 1) / 2)
    assert ma["per_class"]["c"]["iou"] is None and mb["per_class"]["c"]["iou"] is None


def test_block_confusion_sums_per_block() -> None:
    bc = BlockConfusion(2)
    bc.add(np.array([5, 5, 7]), np.array([0, 1, 1]), np.array([0, 0, 2]))
    bc.add(np.array([7]), np.array([1]), np.array([1]))
    assert sorted(bc.blocks) == [5, 7]
    assert bc.blocks[7].tolist() == [[0, 0, 0], [0, 1, 1], [0, 0, 0]]
    assert bc.total().sum() == 4


def test_bootstrap_interval_covers_the_true_accuracy_about_95_percent() -> None:
    true_oa, covered = 0.8, 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        blocks = []
        for _ in range(30):  # 30 test blocks of 200 pixels, each pixel right with probability 0.8
            ref = rng.integers(0, 2, 200)
            pred = np.where(rng.random(200) < true_oa, ref, 1 - ref)
            blocks.append(confusion_matrix(ref, pred, labels=[0, 1]))
        lo, hi = bootstrap_intervals(np.stack(blocks), n=400, seed=seed)["overall_accuracy"]
        covered += lo <= true_oa <= hi
    assert 0.90 <= covered / 200 <= 0.99, covered


def _metrics(**over: object) -> dict:
    m = {
        "model": {"arch": "unet"},
        "kappa": 0.6,
        "overall_accuracy": 0.8,
        "pixels": 20000,
        "test_blocks": 10,
        "class_pixels": {
            "train": {"a": 1000, "b": 1000},
            "val": {"a": 500, "b": 500},
            "test": {"a": 10000, "b": 10000},
        },
        "per_class": {
            "a": {"support": 10000, "predicted": 12000},
            "b": {"support": 10000, "predicted": 8000},
        },
        "baselines": [
            {"name": "random forest", "kind": "random_forest", "kappa": 0.5, "overall_accuracy": 0.75}
        ],
    }
    m.update(over)
    return m


def test_conclusion_warnings() -> None:
    assert conclusion_warnings(_metrics(), {"a": 1, "b": 1}, None, []) == []
    codes = lambda m, lost=None: [c for c, _ in conclusion_warnings(m, {"a": 900, "b": 1000}, lost, [])]  # noqa: E731
    assert codes(_metrics(kappa=0.1)) == ["low_kappa", "baseline_better"]
    assert "no_better_than_majority" in codes(
        _metrics(
            overall_accuracy=0.9, class_pixels={**_metrics()["class_pixels"], "test": {"a": 19000, "b": 1000}}
        )
    )
    assert (
        codes(
            _metrics(per_class={"a": {"support": 10, "predicted": 20}, "b": {"support": 5, "predicted": 0}})
        )[0]
        == "class_never_predicted"
    )
    found_nowhere = {
        "a": {"support": 10, "predicted": 20, "recall": 1.0},
        "b": {"support": 5, "predicted": 3, "recall": 0.0},
    }
    w = conclusion_warnings(_metrics(per_class=found_nowhere), {}, None, [])
    assert [c for c, _ in w] == ["class_never_found"] and "'b' (5 px; 3 px mapped as it" in w[0][1]
    found_some = {**found_nowhere, "b": {"support": 5, "predicted": 3, "recall": 0.2}}
    assert conclusion_warnings(_metrics(per_class=found_some), {}, None, []) == []
    val_missing = {**_metrics()["class_pixels"], "val": {"a": 500, "b": 0}}
    w = conclusion_warnings(_metrics(class_pixels=val_missing), {}, None, [])
    assert [c for c, _ in w] == ["class_absent_val"] and "'b'" in w[0][1]
    assert codes(_metrics(class_pixels={**_metrics()["class_pixels"], "test": {"a": 10000, "b": 50}}))[
        -1
    ] == ("class_few_test")
    assert codes(_metrics(test_blocks=3)) == ["small_test_split"]
    assert codes(_metrics(), {"a": 100, "b": 10}) == ["labels_lost_to_nodata"]  # a: 10 % lost, b: 1 %
    rf_better = _metrics(
        baselines=[{"name": "random forest", "kind": "random_forest", "kappa": 0.7, "overall_accuracy": 0.85}]
    )
    assert codes(rf_better) == ["baseline_better"]


def test_a_window_much_larger_than_the_chip_is_a_config_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eoforge.cli import main
    from eoforge.config import config_warnings

    base = {"inputs": {"images": ["a.tif"], "labels": {"path": "l.tif"}, "classes": {1: "a", 2: "b"}}}
    ok = parse_config({**base, "chips": {"size": 64}, "predict": {"tile": 128}})
    assert config_warnings(ok) == []
    big = parse_config({**base, "chips": {"size": 32}, "predict": {"tile": 128}})
    [(code, message)] = config_warnings(big)
    assert code == "window_much_larger_than_chip" and "128 px" in message and "32 px" in message
    import yaml

    img = write_tif(tmp_path / "a.tif", np.ones((1, 40, 40), np.uint8))
    write_tif(tmp_path / "l.tif", np.ones((1, 40, 40), np.uint8))
    (tmp_path / "c.yaml").write_text(
        yaml.safe_dump({**base, "chips": {"size": 32}, "predict": {"tile": 128}})
    )
    main(["-q", "prepare", str(tmp_path / "c.yaml"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "window_much_larger_than_chip" in err and img.exists()


def test_report_opens_in_a_browser_with_every_section(prepared: dict, tmp_path: Path) -> None:
    """Headless Chromium renders the report: no console error, warnings first, every section present."""
    from cdp import CHROMIUM, Browser

    if not Path(CHROMIUM).exists():
        pytest.skip("needs the Debian chromium package")
    _, out = _run_eval(prepared, 64, arch="test-pick-band0")
    with Browser(width=1200, height=1600) as b:
        b.goto((out / "report.html").resolve().as_uri())
        b.wait_for("document.readyState === 'complete'")
        ids = b.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
        assert ids[:2] == ["warnings", "headline"]
        assert {"data", "per-class", "confusion", "curves", "importance", "panels"} <= set(ids)
        rows = b.evaluate("document.querySelectorAll('#headline tr').length")
        assert rows == 1 + 3  # header, the model, majority class, random forest
        broken = b.evaluate(
            "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length"
        )
        assert broken == 0
        assert b.errors() == []
        shot = b.screenshot(tmp_path / "report.png")
    assert shot.stat().st_size > 10_000


def test_report_ranks_the_band_the_model_uses_first(prepared: dict) -> None:
    """The model reads band 0 only: permutation importance puts b0 first and the others at 0; the curves come
    from its probabilities on the test chips."""
    metrics, _ = _run_eval(prepared, 64, arch="test-pick-band0")
    drop = metrics["band_importance"]["miou_drop"]
    assert next(iter(drop)) == "b0" and drop["b0"] > 0.3
    assert drop["red"] == pytest.approx(0.0) and drop["nir"] == pytest.approx(0.0)
    assert metrics["curves"]["test_chips"] == len(prepared["store"].splits["test"])
    assert min(v for v in metrics["curves"]["roc_auc"].values() if v is not None) > 0.9


def test_a_band_missing_at_many_valid_pixels_is_a_warning_of_the_report(tmp_path: Path) -> None:
    """The fixture's scene with 'red' missing on its 40 left columns (nodata_rule 'all' keeps those pixels):
    the warning names the band and gives the map's accuracy on the gap's test pixels and elsewhere."""
    cls, b0, red, nir = _bands()
    red[:, :40] = -1  # nodata
    img = write_tif(tmp_path / "img.tif", np.stack([b0, red, nir]).astype(np.float32), nodata=-1)
    lab = write_tif(tmp_path / "labels.tif", np.array([10, 20, 30], np.uint8)[cls], nodata=0)
    scene, store = _prepare_and_chip(img, lab, tmp_path / "run")
    assert scene.band_gaps == {"red": pytest.approx(0.25)}
    pkg = package_for(
        tmp_path / "model", "test-window-mean", ["b0", "red", "nir"], CLASSES, tile=64, overlap=16
    )
    predict(pkg, [img], tmp_path / "map.tif")
    out = tmp_path / "eval"
    metrics = evaluate(
        load_package(pkg), store, scene, tmp_path / "map.tif", out, cfg=EvaluateConfig(bootstrap=50)
    )
    # by hand: the map vs the test pixels, on the 40 gap columns and elsewhere
    with rasterio.open(tmp_path / "map.tif") as m, rasterio.open(out / "eval" / "test_pixels.tif") as t:
        pred, ref, nd = m.read(1), t.read(1), t.nodata
    scored = ref != nd
    on_gap = np.zeros_like(scored)
    on_gap[:, :40] = True
    expect_gap = (pred == ref)[scored & on_gap].mean()
    expect_rest = (pred == ref)[scored & ~on_gap].mean()
    got = metrics["band_gaps"]
    assert got["test_pixels_on_gaps"] == int((scored & on_gap).sum()) > 0
    assert got["overall_accuracy_on_gaps"] == pytest.approx(expect_gap)
    assert got["overall_accuracy_elsewhere"] == pytest.approx(expect_rest)
    (msg,) = [w["message"] for w in metrics["warnings"] if w["code"] == "band_gaps"]
    assert "'red' at 25%" in msg and f"score OA {expect_gap:.3f} against {expect_rest:.3f} elsewhere" in msg
    assert "band_gaps" in (out / "report.html").read_text()
