"""SIGINT and SIGTERM as an exception, so every ``finally`` cleans up before a command exits.

Inside :func:`stop_on_signals` both signals raise :class:`Interrupted` in the main thread: staging folders
are removed by their context managers, child processes are ended by their owners, and the command line
prints one line (``interrupted; continue with …``) and exits with 128 + the signal number (130 for
SIGINT, 143 for SIGTERM), as a shell reports a process killed by that signal.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

RESTART = "the same command"  # what to run after an interruption, unless the interrupted code knows better


class Interrupted(BaseException):
    """Raised by SIGINT/SIGTERM inside :func:`stop_on_signals` (a BaseException, like KeyboardInterrupt).

    ``hint`` says how to continue; code that knows more (e.g. a run that can be resumed) replaces it.
    """

    def __init__(self, signum: int, hint: str = RESTART) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum, self.hint = signum, hint

    @property
    def exit_code(self) -> int:
        """128 + the signal number."""
        return 128 + self.signum


def _raise(signum: int, frame: FrameType | None) -> None:
    # A second signal must not cut the cleanup short. A Python no-op handler, not SIG_IGN: a signal that
    # arrives while the handler is being switched would otherwise surface as "Signal N ignored" OSError.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore)
    raise Interrupted(signum)


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Swallow a signal that arrives while an interruption is being cleaned up."""


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` for the duration of the block (main thread only).

    After the first signal both are ignored until the block is left, so cleanup is not cut short.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
