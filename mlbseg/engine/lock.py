"""Folder locks: one process at a time trains a run, one ``mlbseg repeat`` at a time works in a folder.

A lock is a POSIX ``flock`` on ``FOLDER/.lock``, held for as long as the file stays open. It belongs to
the process holding it and ends with it however it ends (SIGKILL included), so a ``.lock`` file left
behind never blocks anyone. The training engine holds :func:`run_lock` while a run trains; ``mlbseg
repeat`` asks :func:`is_locked` before it starts anything, so a rerun never trains a run that an orphaned
worker of an earlier repeat is still training. Where ``fcntl`` is missing (Windows) nothing is locked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO

from mlbseg.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
BUSY = "another process is training this run (lock held); wait for it or stop it"


@contextmanager
def folder_lock(folder: str | Path, busy: str) -> Iterator[None]:
    """Hold ``folder/.lock`` (created with ``folder``) exclusively for the block, without waiting.

    Raises:
        UserError: ``"FOLDER: <busy>"`` when another process holds the lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / LOCK_NAME).open("a") as handle:
        if not _try_lock(handle):
            raise UserError(f"{folder}: {busy}")
        yield


def run_lock(run_dir: str | Path) -> AbstractContextManager[None]:
    """Hold ``run_dir/.lock`` while a run trains; UserError if another process trains it.

    Example:
        >>> import tempfile
        >>> run_dir = Path(tempfile.mkdtemp()) / "run"
        >>> with run_lock(run_dir):
        ...     is_locked(run_dir)
        True
        >>> is_locked(run_dir)
        False
    """
    return folder_lock(run_dir, BUSY)


def is_locked(folder: str | Path) -> bool:
    """Whether a process (this one included, through another open file) holds ``folder/.lock``."""
    path = Path(folder) / LOCK_NAME
    if not path.is_file():
        return False
    with path.open("rb") as handle:  # closing it releases the lock if the probe took it
        return not _try_lock(handle)


def _try_lock(handle: IO) -> bool:
    """Take an exclusive lock on ``handle`` if no one holds one; whether it was taken."""
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
