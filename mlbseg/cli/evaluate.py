"""``mlbseg evaluate``: test-set Dice and HD95 of a trained run."""

from __future__ import annotations

from pathlib import Path

import typer


def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder written by `mlbseg train`."),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last, or a checkpoint path."),
    prepared: Path | None = typer.Option(
        None, "--prepared", help="Prepared dataset; default: the one the run was trained on."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
) -> None:
    """Per-volume Dice and HD95 on the test cases at original resolution → RUN_DIR/summary.json.

    With more than two labels each foreground class is scored, and Dice and HD95 are their mean.

    summary.json is derived (as in nnU-Net): each evaluation replaces it, whichever --checkpoint and
    --prepared it used, and it records both. `mlbseg repeat` and `mlbseg demo` count a run as finished
    only with a summary of the final checkpoint and evaluate it again otherwise.
    """
    from rich.console import Console
    from rich.table import Table

    from mlbseg.seg.evaluate import evaluate_run

    summary = evaluate_run(run_dir, checkpoint=checkpoint, prepared=prepared, device=device)
    classes = list(summary["mean"].get("classes", {}))  # K > 2 labels: Dice/HD95 are the class mean
    table = Table(title=f"{run_dir} ({summary['method']}, {summary['noise']}, seed {summary['seed']})")
    for column in ("case", "Dice (%)", "HD95 (mm)", *(f"{c} {m}" for c in classes for m in ("Dice", "HD95"))):
        table.add_column(column, justify="right")
    for case, metrics in summary["cases"].items():
        per_class = [
            _fmt(metrics["classes"][c][m], scale)
            for c in classes
            for m, scale in (("dice", 100), ("hd95", 1))
        ]
        table.add_row(case, _fmt(metrics["dice"], 100), _fmt(metrics["hd95"]), *per_class)
    mean = summary["mean"]
    means = [mean, *(mean["classes"][c] for c in classes)]
    cells = [_mean_std(m[metric], scale) for m in means for metric, scale in (("dice", 100), ("hd95", 1))]
    table.add_row("mean ± std", *cells)
    Console().print(table)
    if classes:
        typer.echo(f"Dice and HD95: mean over the foreground classes {', '.join(classes)}")
    typer.echo(f"wrote {run_dir / 'summary.json'}")


def _mean_std(stats: dict[str, float | None], scale: float) -> str:
    return f"{_fmt(stats['mean'], scale)} ± {_fmt(stats['std'], scale)}"


def _fmt(value: float | None, scale: float = 1.0) -> str:
    return "failed" if value is None else f"{value * scale:.2f}"
