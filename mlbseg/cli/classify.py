"""``mlbseg classify``: L2B for image classification (CIFAR-10/100, Clothing1M, ISIC 2019).

``train CONFIG`` runs one experiment into a run folder (config, checkpoints, ``metrics.csv`` with the test
accuracy per epoch, noisy labels, α/β logs); ``evaluate RUN_DIR`` scores a checkpoint on the test set and
writes ``summary.json``. Heavy libraries are imported inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import typer

from mlbseg.cli._errors import reports_user_errors

app = typer.Typer(
    help="Learn image classifiers from noisy labels with L2B (CIFAR-10/100, Clothing1M, ISIC 2019).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def train(
    config: Path = typer.Argument(
        ..., help="Run config: a YAML file or a shipped name (`mlbseg configs`), e.g. cifar10."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override one key, e.g. --set data.noise_rate=0.4 (repeatable)."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Output folder; default runs/<name>-<method>-seed<seed>."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --run-dir."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the run in --run-dir (only once the new run has started)."
    ),
) -> None:
    """Train a classifier on noisy labels: baseline, l2rw or l2b (method.name)."""
    from mlbseg.cls.config import ClsConfig, with_absolute_paths
    from mlbseg.config import load_config, resolve_config_path

    cfg = with_absolute_paths(load_config(ClsConfig, resolve_config_path(config, "cls"), overrides))
    from mlbseg.cls.trainer import train as run_training

    folder = run_training(cfg, run_dir, resume=resume, overwrite=overwrite)
    typer.echo(f"finished: {folder}")


def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder written by `mlbseg classify train`."),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last, or a checkpoint path."),
    root: str | None = typer.Option(None, "--root", help="Dataset folder; default: the run's data.root."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    num_workers: int | None = typer.Option(None, "--num-workers", help="Loader workers; default: the run's."),
) -> None:
    """Top-1 accuracy on the clean test set → RUN_DIR/summary.json."""
    from rich.console import Console
    from rich.table import Table

    from mlbseg.cls.evaluate import evaluate_run

    summary = evaluate_run(run_dir, checkpoint=checkpoint, root=root, device=device, num_workers=num_workers)
    table = Table(title=f"{run_dir} ({summary['dataset']}, {summary['method']}, seed {summary['seed']})")
    for column in ("checkpoint", "epoch", "test images", "accuracy (%)", "test loss"):
        table.add_column(column, justify="right")
    table.add_row(
        summary["checkpoint"],
        str(summary["epoch"]),
        str(summary["n"]),
        f"{100 * summary['accuracy']:.2f}",
        f"{summary['loss']:.4f}",
    )
    Console().print(table)
    typer.echo(f"accuracy {100 * summary['accuracy']:.2f} % on {summary['n']} test images")
    typer.echo(f"wrote {run_dir / 'summary.json'}")


app.command("train")(reports_user_errors(train))
app.command("evaluate")(reports_user_errors(evaluate))
