"""``eoforge series``: train and score temporal models on a CSV of labelled pixel series (no raster)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

out_console = Console(soft_wrap=True)


@click.group("series")
def series_cmd() -> None:
    """Temporal models on labelled pixel time series (CSV: id, date, band values…, label)."""


@series_cmd.command("train")
@click.argument("csv", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Output model folder.")
@click.option(
    "--arch",
    default="tempcnn",
    show_default=True,
    type=click.Choice(["tempcnn", "ltae", "pixel-mlp"]),
    help="Registry model.",
)
@click.option(
    "--encoder",
    default=None,
    help="Layout / width of the registry model, e.g. w32 or t12-w32 (default: t<dates>, width 64 for tempcnn).",
)
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=1e-3, show_default=True, type=click.FloatRange(min=0, min_open=True))
@click.option(
    "--test-fraction",
    default=0.3,
    show_default=True,
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
)
@click.option(
    "--split-by",
    default="sample",
    show_default=True,
    type=click.Choice(["sample", "location"]),
    help="location: every place (longitude/latitude, lon/lat or x/y columns) whole in train or test, as new "
    "places are met in a map (the test part is then 1 / round(1 / test-fraction), e.g. a third).",
)
@click.option("--weight-decay", default=1e-2, show_default=True, type=click.FloatRange(min=0))
@click.option(
    "--noise",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Gaussian jitter of the training inputs, in standard deviations (augmentation).",
)
@click.option(
    "--ensemble",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Members trained with seeds seed, seed+1, ...; their class probabilities are averaged.",
)
@click.option(
    "--label-smoothing",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1, max_open=True),
    help="Softened targets (e.g. 0.1): a regulariser for small training sets.",
)
@click.option(
    "--mixup",
    default=0.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Mixup Beta parameter (e.g. 0.2; 0 = off): training series blended in pairs, labels likewise.",
)
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--label-column", default="label", show_default=True)
@click.option("--date-column", default="date", show_default=True)
@click.option("--id-column", default=None, help="Sample id column (default: sample_id or id).")
@click.option("--bands", default=None, help="Comma-separated band columns (default: the numeric columns).")
@click.option("--baseline/--no-baseline", default=True, show_default=True, help="Also score a random forest.")
def series_train_cmd(
    csv: Path,
    out: Path,
    arch: str,
    encoder: str | None,
    epochs: int,
    batch_size: int,
    lr: float,
    test_fraction: float,
    split_by: str,
    weight_decay: float,
    noise: float,
    ensemble: int,
    label_smoothing: float,
    mixup: float,
    seed: int,
    label_column: str,
    date_column: str,
    id_column: str | None,
    bands: str | None,
    baseline: bool,
) -> None:
    """Train ARCH on a seeded stratified split of CSV and score it (and a random forest) on the held-out part."""
    from eoforge.temporal.fit import (
        check_output_folder,
        evaluate_series,
        random_forest,
        save_series_model,
        train_series,
    )
    from eoforge.temporal.series import location_split, read_series_csv, stratified_split

    check_output_folder(out)
    series = read_series_csv(csv, label_column, date_column, id_column, bands.split(",") if bands else None)
    if split_by == "location":
        tr, te = location_split(series.labels, series.locations, test_fraction, seed)
    else:
        tr, te = stratified_split(series.labels, test_fraction, seed)
    fitted = train_series(
        series,
        tr,
        arch=arch,
        encoder=encoder,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        noise=noise,
        ensemble=ensemble,
        label_smoothing=label_smoothing,
        mixup=mixup,
    )
    scores = {arch: evaluate_series(fitted, series, te).to_json()}
    if baseline:
        scores["random_forest"] = random_forest(series, tr, te, seed=seed).to_json()
    metrics = {
        "csv": str(csv),
        "n_train": len(tr),
        "n_test": len(te),
        "classes": list(series.classes),
        "seed": seed,
        "test_fraction": test_fraction,
        "split_by": split_by,
        "scores": scores,
    }
    save_series_model(fitted, out, metrics)
    how = "whole locations" if split_by == "location" else f"{test_fraction:.0%}"
    table = Table(title=f"held-out {len(te)} series ({how}, stratified, seed {seed})")
    for col in ("model", "accuracy", "kappa", "macro F1"):
        table.add_column(col)
    for name, s in scores.items():
        table.add_row(name, f"{s['accuracy']:.4f}", f"{s['kappa']:.4f}", f"{s['macro_f1']:.4f}")
    out_console.print(table)
    out_console.print(f"model and metrics in {out}")
