"""``mlbseg figure overlay|weights|curves|cls-weights``: Figure-5 overlays, α/β maps, curves, Fig. 4."""

from __future__ import annotations

from pathlib import Path

import typer

from mlbseg.cli._errors import reports_user_errors

app = typer.Typer(
    help="Figures as PNG: Figure-5 overlays, α/β weight maps, training curves, classifier α/β (Fig. 4).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing PNG.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")


def _items(values: list[str]) -> list[str]:
    """Values of a repeatable option, each possibly a comma list."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def overlay(
    run_dir: Path = typer.Argument(..., help="A run folder written by `mlbseg train`."),
    cases: list[str] = typer.Option(
        [], "--cases", help="Cases, e.g. Case16 (repeat or comma list); default: 3."
    ),
    slices: list[str] = typer.Option(
        [], "--slices", help="Slice indices, e.g. 5,10,15; default: apex/mid/base."
    ),
    split: str = typer.Option(
        "test", "--split", help="test (reference + prediction) or train (+ noisy label)."
    ),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last, or a checkpoint path."),
    out: Path | None = typer.Option(
        None, "--out", help="PNG for one case; default RUN_DIR/figures/overlay_<case>.png."
    ),
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """Contours of reference (red), noisy label (yellow, train split) and prediction (cyan) on the slices."""
    from mlbseg.errors import UserError
    from mlbseg.run_figures import write_overlays

    try:
        indices = [int(item) for item in _items(slices)]
    except ValueError:
        raise UserError(f"--slices: expected slice numbers such as 5,10,15, got {slices}") from None
    paths = write_overlays(
        run_dir,
        cases=_items(cases),
        slices=indices,
        split=split,
        checkpoint=checkpoint,
        out=out,
        device=device,
        overwrite=overwrite,
    )
    for path in paths:
        typer.echo(f"wrote {path}")


def weights(
    run_dir: Path = typer.Argument(..., help="A run folder of an l2rw or mlbseg run."),
    count: int = typer.Option(4, "--count", min=1, help="Training slices (rows)."),
    checkpoint: str = typer.Option(
        "last", "--checkpoint", help="last (with momentum buffers), final, or a path."
    ),
    seed: int = typer.Option(
        0, "--seed", min=0, help="Seed of the slice choice, augmentation and meta batch."
    ),
    out: Path | None = typer.Option(None, "--out", help="PNG; default RUN_DIR/figures/weights.png."),
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """α (noisy label) and β (pseudo-label) maps of one meta-weighting step, next to image and labels."""
    from mlbseg.errors import UserError
    from mlbseg.figures.weights import weight_map_figure
    from mlbseg.seg.weight_maps import weight_map_rows

    target = out or run_dir / "figures" / "weights.png"
    if target.exists() and not overwrite:
        raise UserError(f"{target}: already exists; pass --overwrite to replace it")
    rows = weight_map_rows(run_dir, checkpoint=checkpoint, count=count, seed=seed, device=device)
    typer.echo(f"wrote {weight_map_figure(rows, target, overwrite=overwrite)}")


def curves(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run folders (each with metrics.csv)."),
    metrics: list[str] = typer.Option(
        [], "--metrics", help="metrics.csv columns, e.g. loss,val_dice,alpha_mean; default: loss,val_dice."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="PNG; default RUN_DIR/figures/curves.png for one run."
    ),
    overwrite: bool = OVERWRITE,
) -> None:
    """One panel per metric, one line per run, against the epoch."""
    from mlbseg.errors import UserError
    from mlbseg.figures.curves import curves_figure, read_metrics_csv

    if out is None and len(run_dirs) > 1:
        raise UserError("--out: several runs make one figure; name its PNG with --out")
    target = out or run_dirs[0] / "figures" / "curves.png"
    names = [path.name for path in run_dirs]
    labels = names if len(set(names)) == len(names) else [str(path) for path in run_dirs]
    runs = {
        label: read_metrics_csv(path / "metrics.csv") for label, path in zip(labels, run_dirs, strict=True)
    }
    chosen = _items(metrics) or ["loss", "val_dice"]
    typer.echo(f"wrote {curves_figure(runs, target, chosen, overwrite=overwrite)}")


def cls_weights(
    run_dir: Path = typer.Argument(
        ..., help="A classification run folder (l2rw/l2b, train.log_weights_for > 0)."
    ),
    epoch: str = typer.Option("last", "--epoch", help="Epoch of weights/epoch_XXX.npz (1-based) or last."),
    count: int = typer.Option(8, "--count", min=1, help="Samples shown per group."),
    out: Path | None = typer.Option(
        None, "--out", help="PNG; default RUN_DIR/figures/cls_weights_epoch_XXX.png."
    ),
    overwrite: bool = OVERWRITE,
) -> None:
    """α and β of logged samples whose pseudo-label is right and noisy label wrong, vs where they agree."""
    from mlbseg.figures.cls_weights import cls_weights_figure, load_weight_log

    chosen, log = load_weight_log(run_dir, epoch)
    target = out or run_dir / "figures" / f"cls_weights_epoch_{chosen:03d}.png"
    typer.echo(f"wrote {cls_weights_figure(log, target, count=count, epoch=chosen, overwrite=overwrite)}")


for _command in (overlay, weights, curves):
    app.command()(reports_user_errors(_command))
app.command("cls-weights")(reports_user_errors(cls_weights))
