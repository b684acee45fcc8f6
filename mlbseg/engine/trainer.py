"""The one training loop every task plugs into (docs/design.md §4.5 and §9).

:func:`train` owns what every run shares: the config check, the device, torchrun, seeding and deterministic
kernels, AMP, the run folder's lifecycle (checked → built → claimed and locked, :mod:`mlbseg.engine.run_dir`),
the learning-rate schedule, the epoch/step loop with its progress bar and logging cadence, the checkpoint
(``last.pt`` after every epoch, written atomically, so a run killed at any point resumes to the same weights
as an uninterrupted one on the same device in deterministic mode) and ``final.pt``.

A task (segmentation, classification) supplies a :class:`Task`: its config check and a builder that reads
its data and builds model, optimizer and step into a :class:`TaskRun`; the run then trains one step at a
time and reports its statistics, validation metrics and extra state.

Across processes (:mod:`mlbseg.engine.distributed`) every process builds and trains the run and reads the
checkpoint it resumes from; only rank 0 touches the run folder, and every other process waits for each of
those writes, so a failure there stops all of them.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from mlbseg.config import to_dict
from mlbseg.engine.checkpoint import load_checkpoint, save_checkpoint
from mlbseg.engine.distributed import Distributed, distributed_session
from mlbseg.engine.logbook import Logbook, QuietLogbook
from mlbseg.engine.optim import build_scheduler
from mlbseg.engine.progress import EpochProgress
from mlbseg.engine.run_dir import FINAL, LAST, Start, claim_run_dir, inspect_run_dir
from mlbseg.engine.seeding import amp_dtype_for, resolve_device, seed_everything
from mlbseg.engine.signals import Interrupted
from mlbseg.errors import UserError


@dataclass(frozen=True)
class Runtime:
    """Where and how a run trains; made by :func:`train` before the task builds anything.

    Attributes:
        device: This process's training device.
        dist: This process's place in a run across processes.
        amp_dtype: Autocast dtype of the real forwards (bf16 on CUDA with ``train.amp``), or None.
        run_dir: The run folder (written by rank 0 only, and only after the build).
    """

    device: torch.device
    dist: Distributed
    amp_dtype: torch.dtype | None
    run_dir: Path

    def place_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` on the device (channels-last on CUDA), with rank 0's weights on every process."""
        model = model.to(self.device)
        if self.device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        self.dist.broadcast_module(model)
        return model


class TaskRun(Protocol):
    """What a task's built run gives the loop. Statistics stay on the device until they are logged."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer

    def steps_in_epoch(self, epoch: int) -> int:
        """Optimizer steps of ``epoch`` (0-based)."""

    def begin_epoch(self, epoch: int) -> None:
        """Prepare ``epoch``'s batches (called before its first step, also after a resume)."""

    def train_step(self) -> None:
        """One iteration on the next batch; accumulates the epoch's statistics on the device."""

    def running_stats(self) -> dict[str, float]:
        """The epoch's statistics so far (a host read; a collective across processes; has ``loss``)."""

    def end_epoch(self) -> dict[str, float]:
        """After the epoch's last step: validation metrics and the task's per-epoch files."""

    def write_inputs(self) -> None:
        """Files describing the run's inputs (rank 0, once the run folder is claimed)."""

    def state_dict(self) -> dict[str, Any]:
        """The task's own state beyond model, optimizer and schedule (every process calls it).

        Its keys sit beside the engine's in ``last.pt`` (checkpoint keys are API), so they must not be
        ``model``, ``optimizer``, ``scheduler``, ``epoch``, ``global_step``, ``world_size``, ``config`` or
        ``history``.
        """

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from the checkpoint, which holds :meth:`state_dict`'s keys."""

    def tensorboard_figures(self, epoch: int) -> dict[str, Any]:
        """Matplotlib figures for TensorBoard after ``epoch`` (1-based), e.g. every few epochs; {} for none.

        Called on the main process only, after :meth:`end_epoch` and before the epoch's checkpoint: it must
        leave the run as it was (parameters, buffers, optimizer state, generators), so a run with figures
        trains exactly as one without.
        """

    def final_state(self) -> dict[str, Any]:
        """What ``final.pt`` holds beyond the weights and the config (what evaluation and predict need).

        Its keys are laid over the engine's, so a task may replace ``model`` (segmentation's
        ``train.select: best_val``).
        """


class Task(Protocol):
    """A kind of training run: its config check and its builder."""

    def check_config(self, cfg: Any) -> None:
        """Raise UserError for a config value out of range or a cross-key conflict (nothing is read)."""

    def build(self, cfg: Any, runtime: Runtime) -> TaskRun:
        """Read the data and build model, optimizer and step (nothing is written)."""


def train(task: Task, cfg: Any, run_dir: Path, *, resume: bool = False, overwrite: bool = False) -> Path:
    """Train ``cfg`` in ``run_dir`` (a fresh run, ``--resume`` or ``--overwrite``) and return the folder.

    Every check runs before the run folder is touched: the config, the folder itself, the data and the
    model. SIGINT/SIGTERM end the run with a hint to resume it.
    """
    task.check_config(cfg)
    device = resolve_device(cfg.train.device)
    with distributed_session(device) as dist:
        start = dist.on_main(lambda: inspect_run_dir(run_dir, resume, overwrite))
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        place = dist.place(device)
        amp_dtype = amp_dtype_for(place) if cfg.train.amp else None
        run = task.build(cfg, Runtime(place, dist, amp_dtype, run_dir))
        loop = _Loop(run, cfg, run_dir, dist)
        with contextlib.ExitStack() as stack:

            def claim() -> None:  # rank 0; the others wait for it and share its error
                stack.enter_context(claim_run_dir(run_dir, start, cfg))
                run.write_inputs()

            dist.on_main(claim)
            try:
                loop.resume_or_start(start)
                loop.run_epochs()
            except Interrupted as err:
                err.hint = f"the same command with --resume --run-dir {run_dir}"
                raise
    return run_dir


class _Loop:
    """The epochs of one run: steps with logging cadence, schedule, checkpoints, ``final.pt``."""

    def __init__(self, run: TaskRun, cfg: Any, run_dir: Path, dist: Distributed) -> None:
        self.run, self.cfg, self.run_dir, self.dist = run, cfg, run_dir, dist
        self.scheduler = build_scheduler(run.optimizer, cfg.schedule, cfg.train.epochs)
        self.epoch, self.global_step = 0, 0
        self.history: list[dict[str, float]] = []

    def resume_or_start(self, start: Start) -> None:
        """Load ``last.pt`` when resuming (every process reads it)."""
        if start is not Start.RESUME:
            return
        state = load_checkpoint(self.run_dir / LAST)
        saved_world = state.get("world_size", 1)
        if saved_world != self.dist.world_size:
            raise UserError(
                f"{self.run_dir / LAST}: written by {saved_world} process(es), this run has "
                f"{self.dist.world_size}; resume with torchrun --nproc-per-node {saved_world}"
                + (" (or without torchrun)" if saved_world == 1 else "")
            )
        try:
            self.run.model.load_state_dict(state["model"])
            self.run.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError) as err:  # torch's messages for keys, shapes, parameter counts
            raise UserError(
                f"{self.run_dir / LAST}: its weights or optimizer state do not fit this run's network "
                f"({' '.join(str(err).split())[:200]}); a last.pt from an earlier mlbseg whose network had "
                "other parameters cannot be resumed: start the run again in a new folder"
            ) from None
        self.scheduler.load_state_dict(state["scheduler"])
        self.run.load_state_dict(state)
        self.epoch, self.global_step, self.history = state["epoch"], state["global_step"], state["history"]

    def run_epochs(self) -> None:
        """Train until ``train.epochs``, writing ``last.pt`` after every epoch and ``final.pt`` at the end."""
        resumed = self.global_step if self.history else None
        logbook = Logbook(self.run_dir, self.history, resumed) if self.dist.is_main else QuietLogbook()
        with contextlib.closing(logbook):
            row = self.history[-1] if self.history else {}
            while self.epoch < self.cfg.train.epochs:
                row = self._epoch(logbook)
                self.epoch += 1
                if self.dist.is_main:
                    logbook.figures(self.run.tensorboard_figures(self.epoch), self.epoch)
                state = self._state()  # every process: the task may gather across processes
                self.dist.on_main(functools.partial(self._save_epoch, logbook, row, state))
            final = {"model": self.run.model.state_dict(), **self.run.final_state()}
            final.update(epoch=self.epoch, config=to_dict(self.cfg))
            self.dist.on_main(lambda: save_checkpoint(final, self.run_dir / FINAL))
            logbook.hparams(to_dict(self.cfg), row)

    def _epoch(self, logbook: Logbook | QuietLogbook) -> dict[str, float]:
        run, log_every = self.run, self.cfg.train.log_every
        num_steps = run.steps_in_epoch(self.epoch)
        run.begin_epoch(self.epoch)
        started = time.perf_counter()
        stats: dict[str, float] = {}
        title = f"epoch {self.epoch + 1}/{self.cfg.train.epochs}"
        with EpochProgress(title, num_steps, enabled=self.dist.is_main) as progress:
            for index in range(num_steps):
                run.train_step()
                self.global_step += 1
                if (index + 1) % log_every == 0 or index + 1 == num_steps:
                    stats = run.running_stats()
                    logbook.scalars("step", stats, self.global_step)
                    progress.update(index + 1, loss=stats["loss"])
        row: dict[str, float] = {"epoch": self.epoch + 1, "lr": run.optimizer.param_groups[0]["lr"]}
        row.update(stats)
        row.update(run.end_epoch())
        row["seconds"] = time.perf_counter() - started
        self.scheduler.step()
        return row

    def _state(self) -> dict[str, Any]:
        return {
            **self.run.state_dict(),
            "model": self.run.model.state_dict(),
            "optimizer": self.run.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "world_size": self.dist.world_size,
            "config": to_dict(self.cfg),
        }

    def _save_epoch(self, logbook: Logbook, row: dict[str, Any], state: dict[str, Any]) -> None:
        """Log the epoch's row, then write ``last.pt`` with the updated metric history."""
        logbook.end_epoch(row)
        save_checkpoint({**state, "history": logbook.history}, self.run_dir / LAST)
