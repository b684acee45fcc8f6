"""How the command line ends a command: a user mistake or an interruption is one line, never a traceback.

A :class:`~mlbseg.errors.UserError` becomes ``Error: <message>`` on stderr and exit code 2. SIGINT and
SIGTERM (:mod:`mlbseg.engine.signals`) become ``interrupted; continue with <hint>`` and exit code 130 or
143, after every cleanup below the command has run.
"""

from __future__ import annotations

import functools
import signal
from collections.abc import Callable
from typing import Any

import typer

from mlbseg.engine.signals import Interrupted, stop_on_signals
from mlbseg.errors import UserError, message_of


def reports_user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``command`` with signals as exceptions; report user errors and interruptions in one line."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with stop_on_signals():
                return command(*args, **kwargs)
        except UserError as err:
            typer.echo(f"Error: {message_of(err)}", err=True)
            raise typer.Exit(code=2) from None
        except Interrupted as err:
            typer.echo(f"interrupted; continue with {err.hint}", err=True)
            raise typer.Exit(code=err.exit_code) from None
        except KeyboardInterrupt:  # SIGINT before the handler was installed
            typer.echo(f"interrupted; continue with {Interrupted(signal.SIGINT).hint}", err=True)
            raise typer.Exit(code=130) from None

    return wrapper
