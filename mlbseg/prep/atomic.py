"""Write an output folder atomically: build it in a temporary sibling, rename it into place at the end.

On any error (including Ctrl-C) the temporary folder is removed and an existing output is left exactly as
it was; an existing output is replaced only when ``overwrite`` is set (DESIGN.md §6).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlbseg.errors import UserError


def check_target(target: Path, overwrite: bool) -> None:
    """Raise UserError if ``target`` exists (without ``overwrite``) or is not a folder."""
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise UserError(f"{target}: already exists; pass --overwrite to replace it")
        if not target.is_dir() or target.is_symlink():
            raise UserError(f"{target}: exists and is not a folder; remove it or choose another output")


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return the ones created, deepest last."""
    missing = [parent for parent in (folder, *folder.parents) if not parent.exists()][::-1]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _replace(staged: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staged, target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    os.rename(target, old / target.name)
    try:
        os.rename(staged, target)
    except BaseException:
        os.rename(old / target.name, target)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_folder(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder; on success it is renamed to ``target``, on error removed.

    Example: ``with atomic_folder(out) as staging: write(staging)``.
    """
    target = Path(target).absolute()
    check_target(target, overwrite)
    created = _make_parents(target.parent)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would make the output private
    try:
        yield staging
        _replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(created):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        raise
