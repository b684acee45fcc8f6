"""The ``mlbseg`` command line: one typer app, one module per command group.

Command modules import only typer and the standard library at import time; each command imports what it
needs inside its body, so ``mlbseg --help`` answers at once. A :class:`~mlbseg.errors.UserError` raised
anywhere below a command becomes one ``Error: ...`` line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
import typer

from mlbseg import __version__
from mlbseg.errors import UserError

app = typer.Typer(
    name="mlbseg",
    help="Learn medical-image segmentation from noisy labels (MLB-Seg / L2B).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


class _UsageProblem(click.ClickException):
    exit_code = 2


def reports_user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`UserError` from ``command`` into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as err:
            raise _UsageProblem(str(err)) from None

    return wrapper


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mlbseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Learn medical-image segmentation from noisy labels (MLB-Seg / L2B)."""


def _register() -> None:
    from mlbseg.cli import data

    for command in (data.synth, data.prepare):
        app.command()(reports_user_errors(command))


_register()


def main() -> None:
    """Console-script entry point."""
    app()
