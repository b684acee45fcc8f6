"""Atomic outputs: every file and folder mlbseg writes appears complete or not at all (docs/design.md §6).

A file is written to a hidden sibling in the same folder, flushed to disk (``fsync``) and renamed over the
target, so the previous version stays valid until the new one is complete and a crash leaves at most a
hidden ``.NAME.*.tmp`` sibling, never a half-written target. A folder is built in a hidden sibling and
renamed into place the same way. New files and folders get the permissions the umask gives
(0644 / 0755 by default), not ``mkstemp``'s private 0600.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mlbseg.errors import UserError


@contextmanager
def atomic_file(path: str | Path) -> Iterator[IO[bytes]]:
    """Yield a binary file that replaces ``path`` once the block finishes without an error.

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "a.txt"
        >>> with atomic_file(target) as file:
        ...     _ = file.write(b"hello")
        >>> target.read_bytes()
        b'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with staged.open("xb") as file:  # mode 0666 & ~umask, like any new file
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Call ``write`` on the file of :func:`atomic_file` (for writers that take a file object)."""
    with atomic_file(path) as file:
        write(file)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_file(path) as file:
        file.write(text.encode("utf-8"))


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
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{folder}: cannot create the folder ({err.strerror})") from None
    return missing


def replace_folder(staged: Path, target: Path) -> None:
    """Rename ``staged`` to ``target``; an existing ``target`` is moved aside first and removed after."""
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

    Missing parent folders created for it are removed again on error. Example:
    ``with atomic_folder(out) as staging: write(staging)``.
    """
    target = Path(target).absolute()
    check_target(target, overwrite)
    created = _make_parents(target.parent)
    # The name is chosen before the folder exists, so an interruption at any point (even inside mkdir)
    # leaves nothing that the cleanup below does not know of. mkdir's mode goes through the umask.
    staging = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            staging.mkdir(mode=0o777)
        except OSError as err:
            raise UserError(f"{target.parent}: cannot write here ({err.strerror})") from None
        yield staging
        replace_folder(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for parent in reversed(created):
            if parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
        raise
