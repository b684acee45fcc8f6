"""``mlbseg figure overlay|methods|weights|curves|compare|cls-weights``: overlays, α/β maps, curves, boxes.

Every command writes PNG, PDF or SVG by the ``--out`` extension (other extensions are refused before any
work); defaults are PNG.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mlbseg.cli._errors import reports_user_errors

app = typer.Typer(
    help="Figures as PNG, PDF or SVG (by the --out extension): Figure-5 overlays, α/β weight maps, "
    "training curves, per-case comparisons of a repeat, classifier α/β (Fig. 4).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

OVERWRITE = typer.Option(False, "--overwrite", help="Replace an existing figure.")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N.")
SLICES = typer.Option([], "--slices", help="Slice indices, e.g. 5,10,15; default: apex/mid/base.")


def _items(values: list[str]) -> list[str]:
    """Values of a repeatable option, each possibly a comma list."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _slice_numbers(values: list[str]) -> list[int]:
    """``--slices`` as integers; UserError for anything else."""
    from mlbseg.errors import UserError

    try:
        return [int(item) for item in _items(values)]
    except ValueError:
        raise UserError(f"--slices: expected slice numbers such as 5,10,15, got {values}") from None


def overlay(
    run_dir: Path = typer.Argument(..., help="A run folder written by `mlbseg train`."),
    cases: list[str] = typer.Option(
        [], "--cases", help="Cases, e.g. Case16 (repeat or comma list); default: 3."
    ),
    slices: list[str] = SLICES,
    split: str = typer.Option(
        "test", "--split", help="test (reference + prediction) or train (+ noisy label)."
    ),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last, or a checkpoint path."),
    out: Path | None = typer.Option(
        None, "--out", help="PNG, PDF or SVG for one case; default RUN_DIR/figures/overlay_<case>.png."
    ),
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """Contours of reference (red), noisy label (yellow, train split) and prediction (cyan) on the slices."""
    from mlbseg.run_figures import write_overlays

    indices = _slice_numbers(slices)
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


def methods(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders trained on the same prepared dataset."),
    out: Path = typer.Option(..., "--out", help="The figure: PNG, PDF or SVG."),
    case: str | None = typer.Option(None, "--case", help="A test case, e.g. Case12; default the first."),
    slices: list[str] = SLICES,
    labels: list[str] = typer.Option(
        [], "--label", help="One row name per run (repeat or comma list); default each run's method.name."
    ),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last, or a checkpoint path."),
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """One row per run on a test case at original resolution: reference and prediction, as evaluated."""
    from mlbseg.run_figures import write_method_overlays

    indices = _slice_numbers(slices)
    path = write_method_overlays(
        run_dirs,
        out,
        names=_items(labels),
        case=case,
        slices=indices,
        checkpoint=checkpoint,
        device=device,
        overwrite=overwrite,
    )
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
    out: Path | None = typer.Option(
        None, "--out", help="PNG, PDF or SVG; default RUN_DIR/figures/weights.png."
    ),
    device: str = DEVICE,
    overwrite: bool = OVERWRITE,
) -> None:
    """α (noisy label) and β (pseudo-label) maps of one meta-weighting step, next to image and labels."""
    from mlbseg.figures import check_figure_path
    from mlbseg.figures.weights import weight_map_figure
    from mlbseg.seg.weight_maps import weight_map_rows

    target = check_figure_path(out or run_dir / "figures" / "weights.png", overwrite=overwrite)
    rows = weight_map_rows(run_dir, checkpoint=checkpoint, count=count, seed=seed, device=device)
    typer.echo(f"wrote {weight_map_figure(rows, target, overwrite=overwrite)}")


def curves(
    run_dirs: list[Path] = typer.Argument(..., help="One or more run folders (each with metrics.csv)."),
    metrics: list[str] = typer.Option(
        [], "--metrics", help="metrics.csv columns, e.g. loss,meta_dice,alpha_mean; default: loss,meta_dice."
    ),
    labels: list[str] = typer.Option(
        [],
        "--label",
        help="One label per run (repeat or comma list), e.g. mlbseg,mlbseg,baseline; runs sharing a label "
        "are drawn as mean ± std. Default: each run's folder name.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="PNG, PDF or SVG; default RUN_DIR/figures/curves.png for one run."
    ),
    overwrite: bool = OVERWRITE,
) -> None:
    """One panel per metric, one line per label (mean ± std band over its runs), against the epoch."""
    from mlbseg.errors import UserError
    from mlbseg.figures import check_figure_path
    from mlbseg.figures.curves import curves_figure, read_metrics_csv

    if out is None and len(run_dirs) > 1:
        raise UserError("--out: several runs make one figure; name its file with --out")
    target = check_figure_path(out or run_dirs[0] / "figures" / "curves.png", overwrite=overwrite)
    names = _items(labels)
    if names and len(names) != len(run_dirs):
        raise UserError(f"--label: {len(names)} label(s) for {len(run_dirs)} run(s); give one per run")
    if not names:
        folders = [path.name for path in run_dirs]
        names = folders if len(set(folders)) == len(folders) else [str(path) for path in run_dirs]
    runs: dict[str, list] = {}
    for name, path in zip(names, run_dirs, strict=True):
        runs.setdefault(name, []).append(read_metrics_csv(path / "metrics.csv"))
    chosen = _items(metrics) or ["loss", "meta_dice"]
    typer.echo(f"wrote {curves_figure(runs, target, chosen, overwrite=overwrite)}")


def compare(
    repeat_dir: Path = typer.Argument(..., help="The --out folder of `mlbseg repeat` (segmentation)."),
    metric: str = typer.Option("dice", "--metric", help="dice or hd95."),
    out: Path | None = typer.Option(
        None, "--out", help="PNG, PDF or SVG; default REPEAT_DIR/figures/compare_<metric>.png."
    ),
    overwrite: bool = OVERWRITE,
) -> None:
    """Per-case test results of each method: a panel per noise level, a box and a point per (seed, case)."""
    from mlbseg.errors import UserError
    from mlbseg.figures import check_figure_path
    from mlbseg.figures.compare import METRICS, compare_figure
    from mlbseg.run_figures import repeat_case_values

    if metric not in METRICS:
        raise UserError(f"--metric {metric}: choose one of {', '.join(METRICS)}")
    target = check_figure_path(out or repeat_dir / "figures" / f"compare_{metric}.png", overwrite=overwrite)
    values = repeat_case_values(repeat_dir, metric)
    typer.echo(f"wrote {compare_figure(values, target, metric, overwrite=overwrite)}")


def cls_weights(
    run_dir: Path = typer.Argument(
        ..., help="A classification run folder (l2rw/l2b, train.log_weights_for > 0)."
    ),
    epoch: str = typer.Option("last", "--epoch", help="Epoch of weights/epoch_XXX.npz (1-based) or last."),
    count: int = typer.Option(8, "--count", min=1, help="Samples shown per group."),
    out: Path | None = typer.Option(
        None, "--out", help="PNG, PDF or SVG; default RUN_DIR/figures/cls_weights_epoch_XXX.png."
    ),
    overwrite: bool = OVERWRITE,
) -> None:
    """α and β of logged samples whose pseudo-label is right and noisy label wrong, vs where they agree."""
    from mlbseg.figures import check_figure_path
    from mlbseg.figures.cls_weights import cls_weights_figure, load_weight_log

    if out is not None:
        check_figure_path(out, overwrite=overwrite)
    chosen, log = load_weight_log(run_dir, epoch)
    target = out or run_dir / "figures" / f"cls_weights_epoch_{chosen:03d}.png"
    typer.echo(f"wrote {cls_weights_figure(log, target, count=count, epoch=chosen, overwrite=overwrite)}")


for _command in (overlay, methods, weights, curves, compare):
    app.command()(reports_user_errors(_command))
app.command("cls-weights")(reports_user_errors(cls_weights))
