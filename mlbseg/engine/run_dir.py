"""The run folder's lifecycle (docs/design.md §4.5): checked, then built, then claimed, then locked.

:func:`inspect_run_dir` decides what a start means for ``RUN_DIR`` without creating or changing anything,
so a mistake found while the task reads its data or builds its model leaves the folder as it was.
:func:`claim_run_dir` then takes the folder: creates it (or replaces it, with ``--overwrite``), writes
``config.yaml`` and holds ``RUN_DIR/.lock`` (:mod:`mlbseg.engine.lock`) until training ends, so a second
writer is refused. A folder whose start died before its first checkpoint holds only ``config.yaml``: it
counts as empty, so it never blocks the corrected command.
"""

from __future__ import annotations

import enum
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlbseg.config import config_text, load_config, to_dict
from mlbseg.engine.atomic import write_text_atomic
from mlbseg.engine.lock import BUSY, LOCK_NAME, is_locked, run_lock
from mlbseg.errors import UserError

LAST = Path("checkpoints") / "last.pt"
FINAL = Path("checkpoints") / "final.pt"
CONFIG = "config.yaml"
_UNSTARTED = {CONFIG, "checkpoints", "tensorboard", LOCK_NAME}  # what a start leaves before its first epoch


class Start(enum.Enum):
    """What a training command does with its run folder."""

    FRESH = "fresh"  # absent, empty, or left by a start that died before its first epoch
    REPLACE = "replace"  # --overwrite of a folder that holds a run
    RESUME = "resume"  # --resume from checkpoints/last.pt


def inspect_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> Start:
    """Check ``run_dir`` for this start; nothing is created.

    Raises:
        UserError: the path is a file; another process trains this run; the folder holds a run (or other
            files) and neither ``resume`` nor ``overwrite`` is set; ``resume`` without a checkpoint; both
            flags; a folder that cannot be created.
    """
    if resume and overwrite:
        raise UserError(f"{run_dir}: --resume continues a run, --overwrite replaces it; pass one of them")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a folder; give another --run-dir")
    if run_dir.is_dir() and is_locked(run_dir):
        raise UserError(f"{run_dir}: {BUSY}")
    has_run = (run_dir / LAST).is_file() or (run_dir / FINAL).is_file()
    if resume:
        if (run_dir / LAST).is_file():
            return Start.RESUME
        if has_run or not _unstarted(run_dir):
            raise UserError(f"{run_dir}: nothing to resume (no {LAST}); start the run without --resume")
        return Start.FRESH  # the earlier start died before its first checkpoint: start it again
    if has_run or not _unstarted(run_dir):
        if not overwrite:
            what = "holds a run" if has_run else "exists and is not empty"
            raise UserError(f"{run_dir}: {what}; use --resume, --overwrite or another --run-dir")
        _check_creatable(run_dir.parent)
        return Start.REPLACE
    _check_creatable(run_dir if run_dir.is_dir() else run_dir.parent)
    return Start.FRESH


def _unstarted(run_dir: Path) -> bool:
    """Absent, empty, or only what a start writes before its first checkpoint."""
    if not run_dir.is_dir():
        return True
    names = {entry.name for entry in run_dir.iterdir()}
    if not names <= _UNSTARTED:
        return False
    checkpoints = run_dir / "checkpoints"
    return not checkpoints.is_dir() or not any(checkpoints.iterdir())


def _check_creatable(folder: Path) -> None:
    """The nearest existing ancestor of ``folder`` must be a writable folder."""
    existing = next(parent for parent in (folder, *folder.parents) if parent.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{existing}: cannot create the run folder here (not a writable folder)")


@contextmanager
def claim_run_dir(run_dir: Path, start: Start, config: Any) -> Iterator[None]:
    """Take ``run_dir`` for this start and hold its lock for the block.

    FRESH and REPLACE write ``config.yaml``; REPLACE first moves the old run aside and deletes it once the
    new folder is in place; RESUME requires ``config`` to equal the run's own.
    """
    if start is Start.REPLACE:
        _replace_with_empty(run_dir)
    try:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{run_dir}: cannot create the run folder ({err.strerror})") from None
    with run_lock(run_dir):
        if start is Start.RESUME:
            check_same_config(config, run_dir)
        else:
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)  # from a start that died early
            save_config(config, run_dir / CONFIG)
        yield


def _replace_with_empty(run_dir: Path) -> None:
    """Move the old ``run_dir`` aside, create an empty one, then delete the old one."""
    old = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".old", dir=run_dir.parent))
    os.rename(run_dir, old / run_dir.name)
    run_dir.mkdir()
    shutil.rmtree(old, ignore_errors=True)


def save_config(config: Any, path: Path) -> None:
    """Write ``config`` atomically as YAML that :func:`mlbseg.config.load_config` reads back equal."""
    write_text_atomic(path, config_text(config))


def check_same_config(cfg: Any, run_dir: Path) -> None:
    """``--resume`` continues the run's own config; a different one on the command line is refused."""
    saved = load_config(type(cfg), run_dir / CONFIG)
    if saved == cfg:
        return
    given, kept = _flat(to_dict(cfg)), _flat(to_dict(saved))
    differing = [key for key, value in given.items() if kept.get(key) != value]
    raise UserError(
        f"{run_dir / CONFIG}: --resume continues the run's own config, but these keys differ: "
        f"{', '.join(differing)}; drop the changes or start a new --run-dir"
    )


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
