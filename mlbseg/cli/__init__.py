"""The ``mlbseg`` command line: one typer app, one module per command group.

Command modules import only typer and the standard library at import time; each command imports what it
needs inside its body, so ``mlbseg --help`` answers at once. A :class:`~mlbseg.errors.UserError` raised
anywhere below a command becomes one ``Error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import typer

from mlbseg import __version__
from mlbseg.cli import classify, configs, data, demo, evaluate, export, figure, predict, repeat, train
from mlbseg.cli._errors import reports_user_errors

app = typer.Typer(
    name="mlbseg",
    help="Learn medical-image segmentation from noisy labels (MLB-Seg / L2B).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlbseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """Learn medical-image segmentation from noisy labels (MLB-Seg / L2B)."""


for _command in (
    data.synth,
    data.prepare,
    train.train,
    evaluate.evaluate,
    repeat.repeat,
    predict.predict,
    demo.demo,
    configs.configs,
):
    app.command()(reports_user_errors(_command))
app.add_typer(classify.app, name="classify")
app.add_typer(figure.app, name="figure")
app.add_typer(export.app, name="export")


def main() -> None:
    """Console-script entry point."""
    app()
