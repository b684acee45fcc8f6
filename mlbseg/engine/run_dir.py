"""The run folder (DESIGN.md §4): created once, never silently reused, resumable."""

from __future__ import annotations

import os
from pathlib import Path

from mlbseg.errors import UserError

LAST = Path("checkpoints") / "last.pt"
FINAL = Path("checkpoints") / "final.pt"


def open_run_dir(run_dir: Path, resume: bool) -> Path | None:
    """Create ``run_dir`` for a new run, or find the checkpoint to resume from.

    Returns:
        The checkpoint to resume from, or None for a fresh run.

    Raises:
        UserError: the folder holds a run and ``resume`` is false; ``resume`` without a checkpoint; the
            folder cannot be created or written.
    """
    last = run_dir / LAST
    if resume:
        if not last.is_file():
            raise UserError(f"{run_dir}: nothing to resume (no {LAST}); start the run without --resume")
        return last
    if run_dir.exists() and any(run_dir.iterdir()):
        raise UserError(f"{run_dir}: run folder exists and is not empty; use --resume or another --run-dir")
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{run_dir}: cannot create the run folder ({err.strerror})") from None
    if not os.access(run_dir, os.W_OK):
        raise UserError(f"{run_dir}: run folder is not writable")
    return None
