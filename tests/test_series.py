"""Labelled pixel series from a long CSV: reading, errors, and the sits MODIS sample against a random forest."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from eoforge.errors import DataError, InputError
from eoforge.temporal.fit import evaluate_series, random_forest, train_series
from eoforge.temporal.series import read_series_csv, stratified_split

CSV = "sample_id,longitude,latitude,label,date,red,nir\n"


def write_csv(path: Path, rows: list[str]) -> Path:
    path.write_text(CSV + "".join(r + "\n" for r in rows))
    return path


def test_long_csv_layout(tmp_path: Path) -> None:
    rows = [
        # dates out of order on purpose: series are sorted by date within a sample
        "7,1.0,2.0,crop,2020-03-01,0.3,0.5",
        "7,1.0,2.0,crop,2020-01-01,0.1,0.2",
        "3,1.0,2.0,forest,2019-01-05,0.05,",
        "3,1.0,2.0,forest,2019-03-05,0.06,0.7",
    ]
    s = read_series_csv(write_csv(tmp_path / "s.csv", rows))
    assert s.bands == ("red", "nir") and s.classes == ("crop", "forest") and s.n_times == 2
    assert s.ids.tolist() == [3, 7] and s.labels.tolist() == [1, 0]
    np.testing.assert_allclose(s.values[1], [[0.1, 0.2], [0.3, 0.5]])
    assert np.isnan(s.values[0, 0, 1])  # gaps stay gaps
    assert s.channels()[1].tolist() == pytest.approx([0.1, 0.2, 0.3, 0.5])  # date-major
    assert str(s.dates[0, 1]) == "2019-03-05"


def test_long_csv_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="different numbers of dates"):
        read_series_csv(
            write_csv(
                tmp_path / "a.csv",
                ["1,0,0,a,2020-01-01,1,1", "1,0,0,a,2020-02-01,1,1", "2,0,0,b,2020-01-01,1,1"],
            )
        )
    with pytest.raises(DataError, match="more than one label"):
        read_series_csv(write_csv(tmp_path / "b.csv", ["1,0,0,a,2020-01-01,1,1", "1,0,0,b,2020-02-01,1,1"]))
    with pytest.raises(InputError, match="no label column 'class'"):
        read_series_csv(write_csv(tmp_path / "c.csv", ["1,0,0,a,2020-01-01,1,1"]), label_column="class")
    with pytest.raises(InputError, match="not found"):
        read_series_csv(tmp_path / "missing.csv")
    with pytest.raises(InputError, match="between 0 and 1"):
        stratified_split(np.array([0, 1]), 1.5, 0)


SAMPLES = os.environ.get("EOFORGE_SAMPLES")


@pytest.mark.skipif(not SAMPLES, reason="EOFORGE_SAMPLES is not set (real EO samples)")
def test_sits_modis_temporal_model_close_to_random_forest() -> None:
    series = read_series_csv(
        Path(str(SAMPLES)) / "sits-modis-ndvi-sinop-timeseries/derived/samples_modis_ndvi_long.csv"
    )
    assert len(series.ids) == 1218 and series.n_times == 12 and len(series.classes) == 4
    tr, te = stratified_split(series.labels, 0.3, seed=0)
    assert len(te) == 366 and not set(tr) & set(te)
    rf = random_forest(series, tr, te, n_estimators=200)
    fitted = train_series(series, tr, arch="ltae", epochs=15, batch_size=32, lr=3e-3)
    temporal = evaluate_series(fitted, series, te)
    assert rf.accuracy > 0.85
    assert temporal.accuracy > rf.accuracy - 0.05, (temporal, rf)


def test_cli_series_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from eoforge.cli import main
    from eoforge.temporal.fit import load_series_model

    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        label = "early" if i % 2 else "late"
        for t in range(6):
            peak = 1 if label == "early" else 4
            v = np.exp(-((t - peak) ** 2)) + rng.normal(0, 0.05)
            rows.append(f"{i},0,0,{label},2021-0{t + 1}-01,{v:.4f},{1 - v:.4f}")
    csv = write_csv(tmp_path / "s.csv", rows)
    out = tmp_path / "model"
    main(["-q", "series", "train", str(csv), "-o", str(out), "--arch", "pixel-mlp", "--epochs", "2"])
    assert "random_forest" in capsys.readouterr().out
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_test"] == 12 and set(metrics["scores"]) == {"pixel-mlp", "random_forest"}
    fitted = load_series_model(out)
    series = read_series_csv(csv)
    assert fitted.n_times == 6 and fitted.bands == ("red", "nir")
    assert fitted.predict_proba(series.channels()).shape == (40, 2)
    with pytest.raises(SystemExit) as exc:
        main(["series", "train", str(tmp_path / "missing.csv"), "-o", str(tmp_path / "m2")])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "missing.csv: time-series CSV not found" in err
    assert not (tmp_path / "m2").exists()
    with pytest.raises(SystemExit) as exc:  # -o naming the input CSV must never replace it
        main(["series", "train", str(csv), "-o", str(csv), "--epochs", "1"])
    assert exc.value.code == 2 and "is not a series model folder" in capsys.readouterr().err
    assert read_series_csv(csv).values.shape == (40, 6, 2)


def test_seed_ensemble_averages_member_probabilities_and_round_trips(tmp_path: Path) -> None:
    import torch

    from eoforge.temporal.fit import SoftmaxMean, load_series_model, save_series_model

    rng = np.random.default_rng(1)
    rows = [
        f"{i},0,0,{'a' if i % 2 else 'b'},2021-0{t + 1}-01,{(i % 2) * t + rng.normal(0, 0.1):.3f},{rng.normal():.3f}"
        for i in range(24)
        for t in range(4)
    ]
    series = read_series_csv(write_csv(tmp_path / "s.csv", rows))
    idx = np.arange(24)
    fitted = train_series(series, idx, arch="pixel-mlp", epochs=2, batch_size=8, ensemble=3)
    assert isinstance(fitted.model, SoftmaxMean) and len(fitted.model.members) == 3
    x = fitted.normalize(series.channels(idx))
    with torch.no_grad():
        mean = torch.stack([torch.softmax(m(x), 1) for m in fitted.model.members]).mean(0)[:, :, 0, 0]
    np.testing.assert_allclose(fitted.predict_proba(series.channels(idx)), mean.numpy(), rtol=1e-5, atol=1e-6)
    assert not torch.equal(fitted.model.members[0].net[0].weight, fitted.model.members[1].net[0].weight)
    out = save_series_model(fitted, tmp_path / "m", {})
    again = load_series_model(out)
    np.testing.assert_allclose(
        again.predict_proba(series.channels(idx)), fitted.predict_proba(series.channels(idx)), rtol=1e-6
    )
    with pytest.raises(InputError, match="at least 1 member"):
        train_series(series, idx, arch="pixel-mlp", epochs=1, ensemble=0)


def test_mixup_blends_batches_and_losses() -> None:
    import torch
    from torch import nn

    from eoforge.temporal.fit import MixupModule

    torch.manual_seed(0)
    model = nn.Conv2d(3, 2, 1)
    x, y = torch.randn(8, 3, 1, 1), torch.tensor([0, 1] * 4)[:, None, None]
    batch = {"image": x, "mask": y}
    ce = nn.CrossEntropyLoss(label_smoothing=0.1)
    task = MixupModule(model, 2, 1e-3, 0.0, 1, 0.4, loss=ce, augment=None)
    torch.manual_seed(5)
    loss = task.training_step(batch, 0)
    torch.manual_seed(5)  # the same draws: lam from Beta(0.4, 0.4), then the pairing permutation
    lam = float(torch.distributions.Beta(0.4, 0.4).sample())
    perm = torch.randperm(8)
    logits = model(lam * x + (1 - lam) * x[perm])
    expected = lam * ce(logits, y) + (1 - lam) * ce(logits, y[perm])
    assert 0 < lam < 1 and not torch.equal(perm, torch.arange(8))
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    plain = MixupModule(model, 2, 1e-3, 0.0, 1, 0.0, loss=nn.CrossEntropyLoss(), augment=None)
    plain_loss = plain.training_step(batch, 0)
    assert float(plain_loss) == pytest.approx(float(nn.CrossEntropyLoss()(model(x), y)), rel=1e-6)
    assert abs(float(plain_loss) - float(loss)) > 1e-3


def test_regularised_tempcnn_separates_phenologies_and_cli_options(tmp_path: Path) -> None:
    from eoforge.cli import main
    from eoforge.temporal.fit import load_series_model

    rng = np.random.default_rng(2)
    rows = []
    for i in range(48):  # same mean NDVI, peak early or late
        peak = 1 if i % 2 else 4
        for t in range(6):
            v = 0.5 + 0.3 * np.exp(-((t - peak) ** 2)) + rng.normal(0, 0.03)
            rows.append(f"{i},0,0,{'early' if i % 2 else 'late'},2021-0{t + 1}-01,{v:.4f},{1 - v:.4f}")
    csv = write_csv(tmp_path / "s.csv", rows)
    series = read_series_csv(csv)
    tr, te = stratified_split(series.labels, 0.25, 0)
    fitted = train_series(
        series,
        tr,
        arch="tempcnn",
        encoder="w8",
        epochs=12,
        batch_size=12,
        lr=3e-3,
        label_smoothing=0.1,
        mixup=0.2,
    )
    assert fitted.encoder == "t6-w8"
    assert evaluate_series(fitted, series, te).accuracy == 1.0
    with pytest.raises(InputError, match="label smoothing 1.0"):
        train_series(series, tr, arch="pixel-mlp", epochs=1, label_smoothing=1.0)
    with pytest.raises(InputError, match="mixup -1"):
        train_series(series, tr, arch="pixel-mlp", epochs=1, mixup=-1)
    with pytest.raises(InputError, match="says 5 dates"):
        train_series(series, tr, arch="tempcnn", encoder="t5-w8", epochs=1)
    out = tmp_path / "m"
    args = ["-q", "series", "train", str(csv), "-o", str(out), "--encoder", "w4", "--epochs", "1"]
    main([*args, "--label-smoothing", "0.1", "--mixup", "0.2", "--no-baseline"])
    again = load_series_model(out)
    assert again.encoder == "t6-w4" and again.model.temporal[0].out_channels == 4


def test_location_split_keeps_every_place_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from eoforge.cli import main
    from eoforge.temporal.series import location_split

    rows = []
    for i in range(36):  # 12 places, 3 years each; a place keeps its class
        place, label = i % 12, ("a", "b", "c")[i % 12 % 3]
        for t in range(3):
            rows.append(
                f"{i},{10 + place * 0.01:.2f},-5.00,{label},{2000 + i // 12}-0{t + 1}-01,{t * (i % 3)}.5,1"
            )
    csv = write_csv(tmp_path / "p.csv", rows)
    series = read_series_csv(csv)
    assert series.locations is not None and len(np.unique(series.locations)) == 12
    assert series.locations[series.ids.tolist().index(13)] == series.locations[series.ids.tolist().index(1)]
    for seed in (0, 1):
        tr, te = location_split(series.labels, series.locations, 0.3, seed)
        assert len(te) == 12 and not set(series.locations[tr]) & set(series.locations[te])
        assert set(series.labels[te].tolist()) == {0, 1, 2}  # every class on both sides
    assert not np.array_equal(location_split(series.labels, series.locations, 0.3, 0)[1], te)
    main(["-q", "series", "train", str(csv), "-o", str(tmp_path / "m"), "--arch", "pixel-mlp", "--epochs", "1",
          "--split-by", "location"])  # fmt: skip
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["split_by"] == "location" and metrics["n_test"] == 12
    bare = tmp_path / "n.csv"
    bare.write_text("sample_id,label,date,red\n1,a,2020-01-01,1\n")
    with pytest.raises(InputError, match="needs coordinate columns"):
        location_split(read_series_csv(bare).labels, read_series_csv(bare).locations, 0.3, 0)
    with pytest.raises(InputError, match="only 12 locations for 20 folds"):
        location_split(series.labels, series.locations, 0.05, 0)
