"""Atomic checkpoint files: a crash while saving never leaves a half-written ``last.pt``.

A checkpoint is a plain dict (model, optimizer, scheduler, EMA teacher, generator and stream states, epoch,
metric history, the resolved config) written with ``torch.save`` to a temporary sibling and renamed over
the target (:mod:`mlbseg.engine.atomic`), so the previous checkpoint stays valid until the new one is
complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import torch

from mlbseg.config import config_from_dict, load_config
from mlbseg.engine.atomic import atomic_file
from mlbseg.engine.run_dir import FINAL, LAST
from mlbseg.errors import UserError

ConfigT = TypeVar("ConfigT")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    with atomic_file(path) as file:
        torch.save(state, file)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; a missing or corrupt file is a user error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise UserError(f"{path}: not a readable mlbseg checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path}: not an mlbseg checkpoint (no 'model' entry)")
    return state


def load_run_checkpoint(
    schema: type[ConfigT], run_dir: Path, checkpoint: str, map_location: str | torch.device = "cpu"
) -> tuple[ConfigT, dict[str, Any]]:
    """A run's config and checkpoint state: ``checkpoint`` is ``final``, ``last`` or a path.

    The config embedded in the checkpoint wins; a checkpoint without one falls back to the run's
    ``config.yaml``.
    """
    path = {"final": run_dir / FINAL, "last": run_dir / LAST}.get(checkpoint, Path(checkpoint))
    state = load_checkpoint(path, map_location=map_location)
    if "config" in state:
        return config_from_dict(schema, state["config"], source=str(path)), state
    return load_config(schema, run_dir / "config.yaml"), state
