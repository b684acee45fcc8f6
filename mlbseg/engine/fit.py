"""The task-agnostic run driver: run folder, resume, epoch loop, checkpoints (DESIGN.md §4).

A task (segmentation, classification) provides a :class:`TrainingRun`; :func:`fit` owns everything around
it: it saves the resolved config (or, on ``--resume``, insists on the run's own), restores the checkpoint,
logs one metrics row per epoch and writes ``checkpoints/last.pt`` atomically after every epoch, so a run
killed at any point resumes to the same weights as an uninterrupted one (same device, deterministic mode).

Across processes (:mod:`mlbseg.engine.distributed`) every process builds and trains the run and reads the
checkpoint it resumes from; only rank 0 touches the run folder (config, checkpoints, ``metrics.csv``,
TensorBoard), and every other process waits for each of those writes, so a failure there stops all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mlbseg.config import load_config, save_config, to_dict
from mlbseg.engine.checkpoint import load_checkpoint, save_checkpoint
from mlbseg.engine.distributed import SINGLE, Distributed
from mlbseg.engine.logbook import Logbook
from mlbseg.engine.run_dir import FINAL, LAST, open_run_dir
from mlbseg.errors import UserError

ConfigT = TypeVar("ConfigT")


class TrainingRun(Protocol):
    """What :func:`fit` needs from a task's run."""

    epoch: int  # completed epochs
    global_step: int  # completed optimizer iterations

    def train_epoch(self, logbook: Logbook) -> dict[str, float]:
        """Train one epoch, validate, advance ``epoch``; return the metrics row (with ``epoch``)."""

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs; must contain ``model``."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""

    def final_state(self) -> dict[str, Any]:
        """What ``final.pt`` holds (the weights and what evaluation needs)."""


class QuietLogbook:
    """What a process other than rank 0 gets for a :class:`Logbook`: its step scalars go nowhere."""

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        """Ignore ``values``."""

    def close(self) -> None:
        """Nothing to close."""


def fit(
    cfg: ConfigT,
    run_dir: Path,
    resume: bool,
    epochs: int,
    build: Callable[[ConfigT], TrainingRun],
    dist: Distributed = SINGLE,
) -> Path:
    """Train ``build(cfg)`` for ``epochs`` epochs in ``run_dir`` (or continue it) and return the folder.

    ``dist``: this process's place in a run across processes; rank 0 alone writes ``run_dir``.
    """
    checkpoint = dist.on_main(lambda: _open(cfg, run_dir, resume))
    run = build(cfg)
    history: list[dict[str, float]] = []
    if checkpoint is not None:
        state = load_checkpoint(checkpoint)
        run.load_state_dict(state)
        history = state.get("history", [])
    purge_step = run.global_step if checkpoint is not None else None
    logbook = Logbook(run_dir, history, purge_step) if dist.is_main else QuietLogbook()
    try:
        while run.epoch < epochs:
            row = run.train_epoch(logbook)  # type: ignore[arg-type]
            snapshot = {**run.state_dict(), "config": to_dict(cfg)}  # every process: it may gather
            dist.on_main(functools.partial(_end_epoch, logbook, row, snapshot, run_dir))
    finally:
        logbook.close()
    final = {**run.final_state(), "epoch": run.epoch, "config": to_dict(cfg)}
    dist.on_main(lambda: save_checkpoint(final, run_dir / FINAL))
    return run_dir


def _open(cfg: Any, run_dir: Path, resume: bool) -> Path | None:
    """Claim ``run_dir`` (writing ``config.yaml``) or check the config of the run to resume."""
    checkpoint = open_run_dir(run_dir, resume)
    if checkpoint is not None:
        _check_same_config(cfg, run_dir)
    else:
        save_config(cfg, run_dir / "config.yaml")
    return checkpoint


def _end_epoch(logbook: Logbook, row: dict[str, Any], state: dict[str, Any], run_dir: Path) -> None:
    """Log the epoch's row, then write ``last.pt`` with the updated metric history."""
    logbook.end_epoch(row)
    save_checkpoint({**state, "history": logbook.history}, run_dir / LAST)


def _check_same_config(cfg: Any, run_dir: Path) -> None:
    """``--resume`` continues the run's own config; a different one on the command line is refused."""
    saved = load_config(type(cfg), run_dir / "config.yaml")
    if saved == cfg:
        return
    given, kept = _flat(to_dict(cfg)), _flat(to_dict(saved))
    differing = [key for key, value in given.items() if kept.get(key) != value]
    raise UserError(
        f"{run_dir / 'config.yaml'}: --resume continues the run's own config, but these keys differ: "
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
