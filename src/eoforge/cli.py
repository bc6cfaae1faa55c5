"""The `eoforge` command line. It owns all output: logging setup, progress bars and the one-line errors.

An :class:`~eoforge.errors.EoforgeError` becomes one line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import errno
import json
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eoforge import __version__
from eoforge.errors import EoforgeError, os_error_line
from eoforge.temporal.command import series_cmd

console = Console(stderr=True)
out_console = Console(soft_wrap=True)


def _setup_logging(verbose: int, quiet: bool, needs_lightning: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = RichHandler(console=console, show_path=False, show_time=verbose > 0, markup=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("eoforge").setLevel(level)
    if needs_lightning:
        import lightning.pytorch  # noqa: F401  (it configures its loggers on import; override them after)
    for noisy in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        lg = logging.getLogger(noisy)
        lg.setLevel(logging.INFO if verbose > 1 else logging.WARNING)
        lg.handlers.clear()
        lg.propagate = True
    if verbose < 2:
        warnings.filterwarnings("ignore")


@contextmanager
def _progress(label: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    if quiet:
        yield lambda done, total: None
        return
    bar = Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task = bar.add_task(label, total=None, start=False)

    def update(done: int, total: int) -> None:
        if not bar.live.is_started:
            bar.start()
            bar.start_task(task)
        bar.update(task, completed=done, total=total)

    try:
        yield update
    except BaseException:
        bar.live.transient = True  # an error is one line: the bar goes
        raise
    finally:
        if bar.live.is_started:
            bar.stop()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="eoforge")
@click.option("-v", "--verbose", count=True, help="More output (-vv shows library logs).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def cli(ctx: click.Context, verbose: int, quiet: bool) -> None:
    """eoforge: from Earth-observation rasters and labels to a trained model, a report and a map."""
    ctx.obj = {"quiet": quiet, "verbose": verbose}
    _setup_logging(
        verbose, quiet, needs_lightning=ctx.invoked_subcommand in {"run", "demo", "train", "series"}
    )


def _ci(m: dict[str, Any], key: str) -> str:
    v = m.get(key)
    if v is None:
        return "n/a"
    ci = (m.get("ci95") or {}).get(key)
    return f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v:.3f}"


def _print_warnings(metrics: dict[str, Any]) -> None:
    for w in metrics.get("warnings", []):
        console.print(f"[yellow]warning ({w['code']}):[/yellow] {w['message']}", highlight=False)


def _headline(out: Path, metrics: dict[str, Any], quiet: bool) -> None:
    _print_warnings(metrics)
    table = Table(title="test split: the delivered map, 95 % intervals over spatial blocks")
    for col in ("model", "kappa", "mean IoU", "overall accuracy"):
        table.add_column(col)
    rows = [(metrics["model"]["arch"], metrics)] + [(b["name"], b) for b in metrics.get("baselines", [])]
    for name, m in rows:
        table.add_row(name, _ci(m, "kappa"), _ci(m, "mean_iou"), _ci(m, "overall_accuracy"))
    for name, m in metrics.get("scenes", {}).items():  # inputs.scenes: the map of each scene
        table.add_row(
            f"{metrics['model']['arch']}, scene {name}",
            _ci(m, "kappa"),
            _ci(m, "mean_iou"),
            _ci(m, "overall_accuracy"),
        )
    if not quiet:
        out_console.print(table)
    maps = out / "maps" if metrics.get("scenes") else out / "map.tif"
    out_console.print(
        f"map{'s' if metrics.get('scenes') else ''}:    {' ' if not metrics.get('scenes') else ''}{maps}"
    )
    out_console.print(f"metrics: {out / 'metrics.json'}")
    out_console.print(f"report:  {out / 'report.html'}")
    out_console.print(f"model:   {out / 'model'}")


def _config_warnings(cfg: Any) -> None:
    """Warnings a config shows before anything runs (they are repeated in the report)."""
    from eoforge.config import config_warnings

    for code, message in config_warnings(cfg):
        console.print(f"[yellow]warning ({code}):[/yellow] {message}", highlight=False)


def _run(cfg: Any, out: Path, ctx: click.Context, credits: str | None = None, fresh: bool = False) -> None:
    from eoforge.pipeline import run

    _config_warnings(cfg)
    quiet = ctx.obj["quiet"]
    with _progress("predict", quiet) as update:
        result = run(
            cfg,
            out,
            progress=not quiet,
            credits=credits,
            on_stage=None if quiet else _announce,
            on_progress=update,
            resume=not fresh,
        )
    _headline(out, result.metrics, quiet)


def _announce(stage: str, skipped: bool) -> None:
    console.print(f"[bold]» {stage}[/bold]" + (" [dim](up to date, skipped)[/dim]" if skipped else ""))


_fresh = click.option("--fresh", is_flag=True, help="Re-run every stage even if its outputs are up to date.")


_scheduler = click.option(
    "--scheduler", default=None, help="Dask scheduler address tcp://host:8786 (compute.scheduler)."
)
_workers = click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Start a local Dask cluster of N workers (compute.workers).",
)


@cli.command("run")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Run directory.")
@_fresh
@_scheduler
@_workers
@click.pass_context
def run_cmd(
    ctx: click.Context, config: Path, out: Path, fresh: bool, scheduler: str | None, workers: int | None
) -> None:
    """Run the whole cycle (prepare, chips, train, evaluate, predict) from a YAML CONFIG.

    Stages whose outputs in OUT were made from the same config are skipped, so an interrupted run continues.
    --scheduler/--workers replace the config's `compute` section for the stages that run on Dask (prepare, chips,
    predict); the outputs are the same on any scheduler, so changing them re-runs nothing.
    """
    from eoforge.config import load_config, with_compute

    _run(with_compute(load_config(config), scheduler, workers), out, ctx, fresh=fresh)


@cli.command("demo")
@click.option("--out", "-o", default=Path("runs/demo"), type=click.Path(path_type=Path), show_default=True)
@click.option("--epochs", default=40, show_default=True, help="Maximum training epochs.")
@_fresh
@click.pass_context
def demo_cmd(ctx: click.Context, out: Path, epochs: int, fresh: bool) -> None:
    """Run the whole cycle on the built-in Landsat 7 demo scene (Raleigh, NC; 7 land-cover classes)."""
    from eoforge.demo import CREDITS, demo_config

    _run(demo_config(epochs), out, ctx, credits=CREDITS, fresh=fresh)


def _stage(name: str, doc: str) -> None:
    @cli.command(name, help=doc)
    @click.argument("config", type=click.Path(path_type=Path))
    @click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Run directory.")
    @click.pass_context
    def cmd(ctx: click.Context, config: Path, out: Path) -> None:
        from eoforge import pipeline
        from eoforge.config import load_config

        cfg = load_config(config)
        _config_warnings(cfg)
        result = pipeline.run_stage(cfg, out, name, progress=not ctx.obj["quiet"])
        if name == "prepare":
            scene = result
            size = (
                f"{len(scene.scenes)} scenes ({', '.join(scene.scenes)})"
                if scene.scenes
                else f"{scene.grid.width}x{scene.grid.height} px"
            )
            out_console.print(f"prepared {size}, {len(scene.bands)} bands: {scene.root}")
        elif name == "train":
            out_console.print(f"model package: {result}")


_stage("prepare", "Stack bands, rasterize labels and compute band statistics into OUT/prepared.")


class _DefaultGroup(click.Group):
    """A group whose first argument, when it is not one of its subcommands, goes to ``default`` instead:
    ``eoforge chips CONFIG -o OUT`` is ``eoforge chips make CONFIG -o OUT``."""

    default = "make"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


@cli.group("chips", cls=_DefaultGroup)
def chips_group() -> None:
    """Chips: `eoforge chips CONFIG -o OUT` cuts them (the stage); `info` and `export` read a run's store."""


@chips_group.command("make")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Run directory.")
@_scheduler
@_workers
def chips_make(config: Path, out: Path, scheduler: str | None, workers: int | None) -> None:
    """Sample, filter and split chips into OUT/chips (needs OUT/prepared); checks the splits for leakage."""
    from eoforge import pipeline
    from eoforge.config import load_config, with_compute

    cfg = with_compute(load_config(config), scheduler, workers)
    _config_warnings(cfg)
    store = pipeline.run_stage(cfg, out, "chips")
    out_console.print(f"chips: { {k: len(v) for k, v in store.splits.items()} } in {store.root}")


def _store_of(run: Path) -> Any:
    from eoforge.chips import ChipStore

    return ChipStore.load(run / "chips" if (run / "chips" / "chips.json").is_file() else run)


@chips_group.command("info")
@click.argument("run", type=click.Path(path_type=Path))
def chips_info(run: Path) -> None:
    """Chips and labelled pixels per split and class of RUN's store (RUN or RUN/chips)."""
    from eoforge.chips.store import info

    counts = info(_store_of(run))
    cols = list(next(iter(counts.values())))
    table = Table(title=f"chips of {run}")
    table.add_column("split")
    for c in cols:
        table.add_column(c, justify="right")
    for split, row in counts.items():
        table.add_row(split, *(f"{row[c]:,}" for c in cols))
    out_console.print(table)


@chips_group.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["tif"]), default="tif", show_default=True)
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Folder to write.")
def chips_export(run: Path, fmt: str, output: Path) -> None:
    """Write RUN's chips as GeoTIFFs (image and label per chip, by split) plus footprints.gpkg, for QGIS."""
    from eoforge.chips.store import export_tif

    n = export_tif(_store_of(run), output)
    out_console.print(f"wrote {n} chips as {fmt} to {output}")


_stage("train", "Train the model on OUT/chips and write the package OUT/model.")

_classes_opt = click.option(
    "--classes",
    multiple=True,
    help="Classes as ID=NAME (repeat or comma-separate), to match reference values by name and name the rows.",
)


def _map_table(metrics: dict[str, Any], title: str) -> None:
    from eoforge.evaluate.metrics import fmt

    table = Table(title=title)
    for col in ("class", "precision", "recall", "F1", "IoU", "support"):
        table.add_column(col, justify="right")
    for name, c in metrics["per_class"].items():
        table.add_row(name, *(fmt(c[k]) for k in ("precision", "recall", "f1", "iou")), str(c["support"]))
    out_console.print(table)
    out_console.print(
        f"overall accuracy {fmt(metrics['overall_accuracy'])}, balanced accuracy "
        f"{fmt(metrics['balanced_accuracy'])}, kappa {fmt(metrics['kappa'])}, mean IoU {fmt(metrics['mean_iou'])} "
        f"over {metrics['pixels']} {metrics['units']}"
    )


@cli.command("evaluate")
@click.argument("target", required=False, type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Run or output directory.")
@click.option("--map", "map_path", type=click.Path(path_type=Path), help="A class map to score (any source).")
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Image(s) to predict with TARGET.",
)
@click.option("--reference", type=click.Path(path_type=Path), help="Reference raster, polygons or points.")
@click.option("--column", help="Class column of a vector reference.")
@_classes_opt
@click.option(
    "--curves/--no-curves",
    default=True,
    show_default=True,
    help="With MODEL_DIR --image: ROC/PR/calibration from the model's probabilities on the reference pixels.",
)
@click.pass_context
def evaluate_cmd(
    ctx: click.Context,
    target: Path | None,
    out: Path,
    map_path: Path | None,
    images: tuple[Path, ...],
    reference: Path | None,
    column: str | None,
    classes: tuple[str, ...],
    curves: bool,
) -> None:
    """Score a model or a map.

    \b
    eoforge evaluate CONFIG -o RUN      the run's delivered map on its test pixels (metrics.json, report.html)
    eoforge evaluate --map MAP.tif --reference REF -o DIR      any map against any reference
    eoforge evaluate MODEL_DIR --image IMG... --reference REF -o DIR   predict DIR/map.tif, then score it
    """
    from eoforge.errors import InputError

    if map_path is not None or images:
        if reference is None:
            raise InputError(
                "--reference is required with --map or --image; give a raster, polygons or points"
            )
        from eoforge.evaluate.compare import evaluate_map

        predictor: Any = None
        if map_path is not None:
            if target is not None or images:
                raise InputError(f"--map {map_path}: give either --map or MODEL_DIR --image ..., not both")
        else:
            if target is None:
                raise InputError("--image needs the MODEL_DIR argument (a model package folder)")
            from eoforge.package import load_package
            from eoforge.predict import predict_scene

            predictor = load_package(target)
            if not classes:
                classes = tuple(f"{c.id}={c.name}" for c in predictor.meta.classes)
            with _progress("predict", ctx.obj["quiet"]) as update:
                map_path = predict_scene(predictor, list(images), out / "map.tif", on_progress=update).path
        metrics = evaluate_map(map_path, reference, out, column=column, classes=classes)
        if images and curves:
            _model_curves(predictor, images, reference, column, classes, out, metrics)
        if not ctx.obj["quiet"]:
            _map_table(metrics, f"{map_path.name} vs {reference.name}")
        out_console.print(f"metrics: {out / 'metrics.json'}")
        return
    if target is None:
        raise InputError("give a CONFIG (evaluate a run), or --map/--image with --reference; see --help")
    if reference is not None or column is not None or classes:
        raise InputError("--reference/--column/--classes need --map or --image; a run uses its test chips")
    from eoforge import pipeline
    from eoforge.config import load_config

    cfg = load_config(target)
    _config_warnings(cfg)
    with _progress("predict", ctx.obj["quiet"]) as update:
        metrics = pipeline.run_stage(cfg, out, "evaluate", on_progress=update)
    _print_warnings(metrics)
    out_console.print(json.dumps({k: metrics[k] for k in ("kappa", "mean_iou", "overall_accuracy")}))


def _model_curves(
    predictor: Any,
    images: tuple[Path, ...],
    reference: Path,
    column: str | None,
    classes: tuple[str, ...],
    out: Path,
    metrics: dict[str, Any],
) -> None:
    """Add ROC/PR/calibration to OUT/metrics.json and write their plots (roc.png, pr.png, reliability.png)."""
    from eoforge.evaluate.compare import model_curves
    from eoforge.evaluate.curves import plot_pr, plot_reliability, plot_roc
    from eoforge.evaluate.reference import ClassTable
    from eoforge.io.atomic import atomic_path as atomic_png
    from eoforge.io.atomic import write_text

    names = [c.name for c in predictor.meta.classes]
    colors = [c.color for c in predictor.meta.classes]
    acc = model_curves(predictor, list(images), reference, column, ClassTable.parse(classes))
    metrics["curves"] = acc.to_json(names)
    write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    for name, png in (
        ("roc.png", plot_roc(acc.roc(), names, colors)),
        ("pr.png", plot_pr(acc.pr(), names, colors)),
        ("reliability.png", plot_reliability(acc.calibration())),
    ):
        with atomic_png(out / name) as tmp:
            tmp.write_bytes(png)
    ece = metrics["curves"]["expected_calibration_error"]
    out_console.print(
        f"expected calibration error: {'n/a' if ece is None else f'{ece:.3f}'}; roc.png, pr.png"
    )


@cli.command("sample-design")
@click.argument("map_path", metavar="MAP", type=click.Path(path_type=Path))
@click.option("--total", required=True, type=click.IntRange(min=1), help="Number of sample points.")
@click.option(
    "--min-per-class",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="At least this many points per map class (rare classes), the rest proportional to area.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed.")
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="Points (.gpkg/.geojson/.fgb)."
)
def sample_design_cmd(map_path: Path, total: int, min_per_class: int, seed: int, output: Path) -> None:
    """Propose a stratified random sample of MAP (strata = map classes) as points to label."""
    from eoforge.evaluate.sampling import sample_design

    des = sample_design(map_path, output, total, min_per_class, seed)
    table = Table(title="sample design")
    for col in ("map class", "map pixels", "points"):
        table.add_column(col, justify="right")
    for cid, npx, k in zip(des.classes.ids, des.classes.pixels, des.allocation, strict=True):
        table.add_row(str(cid), str(npx), str(k))
    out_console.print(table)
    out_console.print(f"points: {des.path} (fill the 'reference' column, then run `eoforge area`)")


@cli.command("explain")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--window", required=True, help="col,row,width,height of the window to explain, in pixels.")
@click.option("--layers", default="", help="Comma-separated layer names whose feature maps to write.")
@click.option("--cam-layer", default=None, help="Layer for Grad-CAM (default: the last before the head).")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Output folder.")
def explain_cmd(
    model_dir: Path, images: tuple[Path, ...], window: str, layers: str, cam_layer: str | None, out: Path
) -> None:
    """Grad-CAM per class and feature maps of named layers for a window of IMAGES (GeoTIFFs and PNGs)."""
    from eoforge.evaluate.explain import explain, parse_window

    res = explain(
        model_dir,
        list(images),
        parse_window(window),
        out,
        [s.strip() for s in layers.split(",") if s.strip()],
        cam_layer,
    )
    out_console.print(f"Grad-CAM layer: {res.cam_layer}")
    for f in res.files:
        out_console.print(f"wrote {f}")


def _fmt(v: float | None, spec: str) -> str:
    return "n/a" if v is None else format(v, spec)


@cli.command("area")
@click.argument("map_path", metavar="MAP", type=click.Path(path_type=Path))
@click.option("--reference", required=True, type=click.Path(path_type=Path), help="Labelled sample points.")
@click.option("--column", required=True, help="Column of the points holding the reference class.")
@_classes_opt
@click.option(
    "--out", "-o", required=True, type=click.Path(path_type=Path), help="Output folder (area.json)."
)
def area_cmd(map_path: Path, reference: Path, column: str, classes: tuple[str, ...], out: Path) -> None:
    """Error-adjusted area per class with 95 % CI and accuracies with SE (Olofsson et al. 2014)."""
    from eoforge.evaluate.area import area_estimate

    est = area_estimate(map_path, reference, column, out, classes=list(classes))
    ha = est.pixel_area_ha is not None
    table = Table(title=f"area estimate: {map_path.name}")
    for col in (
        "class",
        "map px",
        "samples",
        "area " + ("ha" if ha else "px"),
        "± 95 %",
        "UA ± SE",
        "PA ± SE",
    ):
        table.add_column(col, justify="right")
    for c in est.classes:
        area, ci = (c.area_ha, c.area_ci95_ha) if ha else (c.area_pixels, c.area_ci95_pixels)
        table.add_row(
            c.name,
            str(c.map_pixels),
            str(c.sample_count),
            _fmt(area, ",.1f"),
            _fmt(ci, ",.1f"),
            f"{_fmt(c.users_accuracy, '.3f')} ± {_fmt(c.users_accuracy_se, '.3f')}",
            f"{_fmt(c.producers_accuracy, '.3f')} ± {_fmt(c.producers_accuracy_se, '.3f')}",
        )
    out_console.print(table)
    out_console.print(
        f"overall accuracy {est.overall_accuracy:.3f} ± {_fmt(est.overall_accuracy_se, '.3f')} (SE); "
        f"written {out / 'area.json'}"
    )


def _positive_multiple_of_32(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    if value is not None and (value <= 0 or value % 32):
        raise click.BadParameter(f"{value} is not a positive multiple of 32")
    return value


@cli.command("predict")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="Class map to write (COG)."
)
@click.option(
    "--tile",
    type=int,
    default=None,
    callback=_positive_multiple_of_32,
    help="Window side in pixels, a multiple of 32 (default: from the package).",
)
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    default=None,
    help="Pixels shared by neighbouring windows (< tile).",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Windows per model call."
)
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1 …")
@click.option(
    "--backend",
    type=click.Choice(["auto", "torch", "torch-fp32", "onnx"]),
    default="auto",
    show_default=True,
    help="auto: fastest that agrees with fp32 (bf16 + channels-last on CPUs with bf16, AMP on a GPU); "
    "torch-fp32: plain fp32 reference; onnx: ONNX Runtime on the package's model.onnx.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default=None,
    help="Older spelling of --backend: fp32 = torch-fp32, bf16 = torch.",
)
@click.option(
    "--ignore-band-names",
    is_flag=True,
    help="Accept images whose band names (descriptions) differ from the model's bands.",
)
@click.option(
    "--blend",
    type=click.Choice(["center", "hann", "triangular"]),
    default=None,
    help="Stitching of overlapping windows: each window's core, or probabilities averaged with tapered weights "
    "(default: the package's, as its evaluated map was made).",
)
@click.option(
    "--probabilities",
    type=click.Choice(["uint8", "float32"]),
    is_flag=False,
    flag_value="uint8",
    default=None,
    help="Also write MAP.probs.tif (a band per class; uint8 = probability x 255).",
)
@click.option(
    "--uncertainty",
    type=click.Choice(["entropy", "max-prob"]),
    is_flag=False,
    flag_value="entropy",
    default=None,
    help="Also write MAP.uncertainty.tif (normalised entropy, or 1 - max probability).",
)
@click.option(
    "--vectorize",
    type=click.Choice(["gpkg", "parquet"]),
    is_flag=False,
    flag_value="gpkg",
    default=None,
    help="Also write the class polygons to MAP.gpkg (or MAP.parquet).",
)
@click.option(
    "--min-area",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Smallest polygon, in pixels.",
)
@click.option(
    "--tta",
    type=click.Choice(["none", "d4"]),
    default=None,
    help="d4: average the 8 flips/rotations (8x the model time); default: the package's (the demo's: d4).",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Run row bands on a local Dask cluster."
)
@click.option("--scheduler", default=None, help="Run row bands on the Dask scheduler at this address.")
@click.pass_context
def predict_cmd(
    ctx: click.Context,
    model_dir: Path,
    images: tuple[Path, ...],
    output: Path,
    tile: int | None,
    overlap: int | None,
    batch_size: int,
    device: str,
    ignore_band_names: bool,
    backend: str,
    precision: str | None,
    blend: str | None,
    probabilities: str | None,
    uncertainty: str | None,
    vectorize: str | None,
    min_area: int,
    tta: str | None,
    workers: int | None,
    scheduler: str | None,
) -> None:
    """Classify IMAGES (files stacked band-wise, in training band order) with MODEL_DIR into a COG.

    A model trained on a time stack takes its dates as DATE=FILE (2021-04-02=s2_0402.tif ...), or the cube file.

    A killed run started again with the same arguments continues from its finished row bands.
    """
    from eoforge.config import ComputeConfig
    from eoforge.errors import InputError
    from eoforge.io.atomic import sweep_temporaries
    from eoforge.io.guard import check_output_file
    from eoforge.predict import PredictOptions, predict
    from eoforge.prepare.dates import strip_date

    files = tuple(Path(strip_date(p)) for p in images)
    check_output_file(output, [model_dir, *files], nbytes=_map_bytes(files))
    sweep_temporaries(output.parent, depth=0, name=output.name)  # what a killed predict left
    if tile is not None and overlap is not None and overlap >= tile:
        raise InputError(f"--overlap {overlap}: must be smaller than --tile {tile}")
    if workers is not None and scheduler is not None:
        raise InputError("--workers and --scheduler: give one of them (a local cluster or a running one)")
    options = PredictOptions(
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        blend=blend,
        tta=tta,
        probabilities=probabilities,
        uncertainty=uncertainty,
        vectorize=vectorize,
        min_area=min_area,
        ignore_band_names=ignore_band_names,
    )
    compute = ComputeConfig(scheduler=scheduler, workers=workers)
    with _progress("predict", ctx.obj["quiet"]) as update:
        res = predict(
            model_dir,
            list(images),
            output,
            device=device,
            on_progress=update,
            precision=precision,
            options=options,
            backend=backend,
            compute=compute,
        )
    out_console.print(
        f"wrote {res.path} ({res.grid.width}x{res.grid.height} px, {res.windows} windows, "
        f"{res.pixels_per_second / 1e6:.2f} MP/s; backend {res.backend}, model {res.model_seconds:.1f} s of "
        f"{res.seconds:.1f} s"
        + (", tta d4 = 8 passes per window" if res.options is not None and res.options.tta == "d4" else "")
        + ")"
    )
    for name, path in res.extras.items():
        out_console.print(f"{name}: {path}")


def _map_bytes(images: tuple[Path, ...]) -> int:
    """Disk space a class map of ``images`` may take while written (raw tiled copy + COG), 0 if unknown."""
    import rasterio

    try:
        with rasterio.open(images[0]) as src:
            return 2 * 2 * src.width * src.height  # at most uint16, uncompressed, two copies
    except (rasterio.errors.RasterioError, OSError, IndexError):
        return 0  # predict itself reports an unreadable image


@cli.command("package")
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--output", "-o", required=True, type=click.Path(path_type=Path), help="Zip file to write.")
@click.option("--no-onnx", is_flag=True, help="Do not add the ONNX export if the package lacks it.")
def package_cmd(run_dir: Path, output: Path, no_onnx: bool) -> None:
    """Zip the model package of RUN_DIR (or a model folder): weights, ONNX, STAC MLM item, config, metrics."""
    from eoforge.package.archive import package_run

    out = package_run(run_dir, output, onnx=not no_onnx)
    out_console.print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


@cli.command("export")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--onnx", "to_onnx", is_flag=True, required=True, help="Export the network to ONNX.")
@click.option("--output", "-o", type=click.Path(path_type=Path), help="Also copy the .onnx file here.")
def export_cmd(model_dir: Path, to_onnx: bool, output: Path | None) -> None:
    """Export the network of the package MODEL_DIR to ONNX (dynamic batch/size, parity-checked vs torch)."""
    import shutil

    from eoforge.io.atomic import atomic_path
    from eoforge.package.onnx import add_onnx

    if not to_onnx:
        raise click.UsageError("choose an export format: --onnx")
    meta = add_onnx(model_dir)
    if meta.onnx is None:  # add_onnx either records the export or raises
        raise click.ClickException("ONNX export not recorded")
    src = Path(model_dir) / meta.onnx.file
    if output is not None:
        with atomic_path(output) as tmp:
            shutil.copyfile(src, tmp)
        src = output
    out_console.print(
        f"wrote {src} (opset {meta.onnx.opset}, max |onnx - torch| = {meta.onnx.max_abs_diff:.2g})"
    )


@cli.command("serve")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--max-upload-mb", default=200, show_default=True, type=click.IntRange(1), help="Larger uploads get 413."
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(1),
    help="/predict requests run at once.",
)
@click.option(
    "--job-workers",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Background jobs (POST /jobs) run at once.",
)
@click.option(
    "--queue",
    "queue_size",
    default=8,
    show_default=True,
    type=click.IntRange(0),
    help="Waiting beyond workers.",
)
def serve_cmd(
    model: Path, host: str, port: int, max_upload_mb: int, workers: int, job_workers: int, queue_size: int
) -> None:
    """Serve MODEL (package folder or zip) over HTTP: REST API, OpenAPI docs at /docs, map page at /."""
    from eoforge.serve import ServeSettings, run_server

    run_server(
        model,
        ServeSettings(
            max_upload_mb=max_upload_mb, workers=workers, job_workers=job_workers, queue=queue_size
        ),
        host=host,
        port=port,
    )


@cli.command("models")
@click.option(
    "--encoders",
    "pattern",
    default=None,
    help="List the encoders instead, those containing PATTERN ('' for all; tu-NAME is any timm model).",
)
@click.option(
    "--arch", default="unet", show_default=True, help="Architecture whose encoders --encoders lists."
)
def models_cmd(pattern: str | None, arch: str) -> None:
    """List the registered model architectures, or with --encoders the encoders they accept."""
    from eoforge.errors import InputError
    from eoforge.models import list_encoders, list_models

    if pattern is None:
        table = Table(title="architectures (model.arch)")
        table.add_column("arch")
        table.add_column("encoders (model.encoder)")
        for m in list_models():
            n = len(list_encoders(m))
            table.add_row(m, f"{n} (eoforge models --encoders '' --arch {m})" if n else "-")
        out_console.print(table)
        return
    if arch not in list_models():
        raise InputError(f"unknown model '{arch}'; choose one of: {', '.join(list_models())}")
    for e in list_encoders(arch):
        if pattern.lower() in e.lower():
            out_console.print(e)


@cli.command("sensors")
def sensors_cmd() -> None:
    """List the sensor presets of inputs.sensor (band names from file names, scale/offset, quality band)."""
    from eoforge.prepare.sensors import SENSORS

    table = Table("sensor", "bands (file token -> common name)", "quality band", "description")
    for s in SENSORS.values():
        bands = ", ".join(f"{b.token}->{b.name}" for b in s.bands)
        table.add_row(s.name, bands, s.quality or "-", s.description)
    out_console.print(table)


@cli.command("indices")
@click.option("--search", default=None, help="Only indices whose name or long name contains this text.")
def indices_cmd(search: str | None) -> None:
    """List the spectral indices of prepare.indices (Awesome Spectral Indices, via spyndex)."""
    from eoforge.prepare.indices import list_indices

    rows = list_indices()
    if search:
        rows = [r for r in rows if search.lower() in r[0].lower() or search.lower() in r[1].lower()]
    table = Table("index", "name", "bands (common names)")
    for name, long_name, bands in rows:
        table.add_row(name, long_name, ", ".join(bands))
    out_console.print(table)


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so `finally` blocks (temporary files, locks) run before exit."""


_signalled: list[int] = []


def _on_signal(signum: int, frame: object) -> None:
    _signalled.append(signum)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


def _signal_exit() -> None:
    """Exit for a signal received during the command: 130 (`aborted`) for SIGINT, 143 for SIGTERM."""
    if _signalled[-1] == signal.SIGTERM:
        console.print("terminated")
        sys.exit(128 + signal.SIGTERM)
    console.print("aborted")
    sys.exit(130)


cli.add_command(series_cmd)  # eoforge series train (eoforge.temporal.command)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: eoforge errors and OS errors naming a path are one line and exit code 2; SIGINT exits 130
    with `aborted`, SIGTERM 143 with `terminated`, both after cleaning up what was half-written."""
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, _on_signal)
    _signalled.clear()
    try:
        cli.main(args=argv, prog_name="eoforge", standalone_mode=False)
    except EoforgeError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(2)
    except click.UsageError as exc:  # bad option values: one line, like every other error
        console.print(
            f"[red]error:[/red] {escape(exc.format_message())}", highlight=False, markup=True, soft_wrap=True
        )
        sys.exit(2)
    except OSError as exc:
        if exc.filename is None and errno.errorcode.get(exc.errno or 0) not in _OS_ERRNOS:
            raise  # not about a path the user gave: a bug, keep the traceback
        line = escape(os_error_line(exc))
        console.print(f"[red]error:[/red] {line}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(2)
    except (click.exceptions.Abort, KeyboardInterrupt, Terminated):
        if not _signalled:
            _signalled.append(signal.SIGINT)
        _signal_exit()
    except SystemExit:
        if _signalled:  # Lightning turns Ctrl-C during fit into sys.exit(1)
            _signal_exit()
        raise
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    finally:
        for sig, h in handlers.items():
            signal.signal(sig, h)


_OS_ERRNOS = {"ENOSPC", "EDQUOT", "EROFS", "EFBIG", "EACCES", "EPERM"}


if __name__ == "__main__":
    main()
