"""How the command line reports a :class:`~mlbseg.errors.UserError`: one line, exit code 2."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from mlbseg.errors import UserError


def reports_user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`UserError` from ``command`` into ``Error: <message>`` on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as err:
            typer.echo(f"Error: {err}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper
