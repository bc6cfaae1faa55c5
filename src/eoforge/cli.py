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
        elif name == "evaluate":
            metrics = pipeline.stage_evaluate(cfg, out)
            out_console.print(json.dumps({k: metrics[k] for k in ("overall_accuracy", "kappa", "mean_iou")}))


_stage("prepare", "Stack bands, rasterize labels and compute band statistics into OUT/prepared.")
_stage("chips", "Cut chips and split them by spatial blocks into OUT/chips (needs OUT/prepared).")
_stage("train", "Train the model on OUT/chips and write the package OUT/model.")
_stage("evaluate", "Score OUT/model on the test chips; write OUT/metrics.json and OUT/report.html.")


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
