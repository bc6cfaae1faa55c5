"""The `eoforge` command line. It owns all output: logging setup, progress bars and the one-line errors.

An :class:`~eoforge.errors.EoforgeError` becomes one line on stderr and exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from eoforge import __version__
from eoforge.errors import EoforgeError

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
    _setup_logging(verbose, quiet, needs_lightning=ctx.invoked_subcommand in {"run", "demo", "train"})


def _headline(out: Path, metrics: dict[str, Any], quiet: bool) -> None:
    table = Table(title="test split")
    for col in ("model", "overall accuracy", "kappa", "mean IoU"):
        table.add_column(col)
    table.add_row(
        metrics["model"]["arch"],
        f"{metrics['overall_accuracy']:.3f}",
        f"{metrics['kappa']:.3f}",
        f"{metrics['mean_iou']:.3f}",
    )
    if "baseline" in metrics:
        b = metrics["baseline"]
        table.add_row(
            "random forest", f"{b['overall_accuracy']:.3f}", f"{b['kappa']:.3f}", f"{b['mean_iou']:.3f}"
        )
    if not quiet:
        out_console.print(table)
    out_console.print(f"map:     {out / 'map.tif'}")
    out_console.print(f"metrics: {out / 'metrics.json'}")
    out_console.print(f"report:  {out / 'report.html'}")
    out_console.print(f"model:   {out / 'model'}")


def _run(cfg: Any, out: Path, ctx: click.Context, credits: str | None = None, fresh: bool = False) -> None:
    from eoforge.pipeline import run

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


@cli.command("run")
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Run directory.")
@_fresh
@click.pass_context
def run_cmd(ctx: click.Context, config: Path, out: Path, fresh: bool) -> None:
    """Run the whole cycle (prepare, chips, train, evaluate, predict) from a YAML CONFIG.

    Stages whose outputs in OUT were made from the same config are skipped, so an interrupted run continues.
    """
    from eoforge.config import load_config

    _run(load_config(config), out, ctx, fresh=fresh)


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
        out.mkdir(parents=True, exist_ok=True)
        if name == "prepare":
            scene = pipeline.stage_prepare(cfg, out)
            out_console.print(
                f"prepared {scene.grid.width}x{scene.grid.height} px, {len(scene.bands)} bands: {scene.root}"
            )
        elif name == "chips":
            store = pipeline.stage_chips(cfg, out)
            out_console.print(f"chips: { {k: len(v) for k, v in store.splits.items()} } in {store.root}")
        elif name == "train":
            path = pipeline.stage_train(cfg, out, progress=not ctx.obj["quiet"])
            out_console.print(f"model package: {path}")


_stage("prepare", "Stack bands, rasterize labels and compute band statistics into OUT/prepared.")
_stage("chips", "Cut chips and split them by spatial blocks into OUT/chips (needs OUT/prepared).")
_stage("train", "Train the model on OUT/chips and write the package OUT/model.")

_classes_opt = click.option(
    "--classes",
    multiple=True,
    help="Classes as ID=NAME (repeat or comma-separate), to match reference values by name and name the rows.",
)


def _map_table(metrics: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    for col in ("class", "precision", "recall", "F1", "IoU", "support"):
        table.add_column(col, justify="right")
    for name, c in metrics["per_class"].items():
        table.add_row(name, *(f"{c[k]:.3f}" for k in ("precision", "recall", "f1", "iou")), str(c["support"]))
    out_console.print(table)
    out_console.print(
        f"overall accuracy {metrics['overall_accuracy']:.3f}, balanced accuracy "
        f"{metrics['balanced_accuracy']:.3f}, kappa {metrics['kappa']:.3f}, mean IoU {metrics['mean_iou']:.3f} "
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
    eoforge evaluate CONFIG -o RUN                  the test chips of a run (metrics.json, report.html)
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
    out.mkdir(parents=True, exist_ok=True)
    metrics = pipeline.stage_evaluate(cfg, out)
    out_console.print(json.dumps({k: metrics[k] for k in ("overall_accuracy", "kappa", "mean_iou")}))


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


@cli.command("predict")
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--output", "-o", required=True, type=click.Path(path_type=Path), help="Class map to write (COG)."
)
@click.option("--tile", type=int, default=None, help="Window side in pixels (default: from the package).")
@click.option("--overlap", type=int, default=None, help="Pixels shared by neighbouring windows.")
@click.option("--batch-size", type=int, default=8, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1 …")
@click.option(
    "--precision",
    type=click.Choice(["fp32", "bf16"]),
    default="fp32",
    show_default=True,
    help="bf16 autocast is ~2.5x faster on CPUs with AMX; class maps may differ from fp32 on a few pixels.",
)
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
    precision: str,
) -> None:
    """Classify IMAGES (files stacked band-wise, in training band order) with MODEL_DIR into a COG."""
    from eoforge.predict import predict

    with _progress("predict", ctx.obj["quiet"]) as update:
        res = predict(
            model_dir,
            list(images),
            output,
            tile,
            overlap,
            batch_size,
            device,
            on_progress=update,
            precision=precision,
        )
    out_console.print(
        f"wrote {res.path} ({res.grid.width}x{res.grid.height} px, {res.windows} windows, "
        f"{res.pixels_per_second / 1e6:.2f} MP/s)"
    )


@cli.command("models")
def models_cmd() -> None:
    """List the registered model architectures."""
    from eoforge.models import list_models

    for m in list_models():
        out_console.print(m)


def main(argv: list[str] | None = None) -> None:
    try:
        cli.main(args=argv, prog_name="eoforge", standalone_mode=False)
    except EoforgeError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, markup=True, soft_wrap=True)
        sys.exit(2)
    except click.exceptions.Abort:
        console.print("aborted")
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
