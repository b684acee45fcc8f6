"""Which runs a repeat consists of, and where each one stands on disk.

Every (method, noise, seed) is one independent run in ``OUT/<method>-<noise>-seed<k>/``, configured by
CONFIG, the user's ``--set`` and three more overrides: ``method.name``, the task's noise key
(``data.noise`` for segmentation) and ``train.seed``. What exists in the run folder decides what happens:

- ``finished``: ``checkpoints/final.pt`` and a ``summary.json`` of it → skipped;
- ``evaluate``: ``final.pt`` without a ``summary.json`` of it (none, or one a user made of another
  checkpoint with ``mlbseg evaluate --checkpoint``, which the evaluation replaces) → evaluated only;
- ``resume``: ``checkpoints/last.pt`` → trained with ``--resume``, then evaluated;
- ``fresh``: no checkpoint → trained from the start, then evaluated. The remains of an attempt that died
  before its first checkpoint (config, TensorBoard events, its log) are cleared; the old log is kept;
- ``queued``: a job of this repeat's ``--launcher submitit`` is queued or running for it
  (``OUT/.submitit/jobs.json``, :mod:`~mlbseg.repeat.slurm`) → left to that job, neither started nor
  reported as busy.

:func:`worker_job` is how a run is started in each state: the worker's command line and where its log goes.

A run folder that already holds a *different* experiment (its ``config.yaml`` differs) or something that
is not an mlbseg run is refused before anything starts, so a repeat never mixes or destroys results.
So is a run that another process is training (its ``.lock`` is held, :mod:`mlbseg.engine.lock`), e.g. by
a worker that outlived an earlier ``mlbseg repeat`` killed with SIGKILL: the whole command stops with one
line before any run starts, rather than skipping the run and reporting a table without it. Stop that
process (or let it finish) and run the same command again.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbseg.config import to_dict
from mlbseg.engine.lock import BUSY, LOCK_NAME, is_locked
from mlbseg.errors import UserError
from mlbseg.repeat.scheduler import Job
from mlbseg.repeat.tasks import RepeatTask

FINISHED, EVALUATE, RESUME, FRESH, QUEUED = "finished", "evaluate", "resume", "fresh", "queued"
LOG_NAME = "log.txt"
CONFIG_NAME = "config.yaml"
SUMMARY_NAME = "summary.json"
FINAL = Path("checkpoints") / "final.pt"
LAST = Path("checkpoints") / "last.pt"
AXIS_KEYS = ("method.name", "train.seed")  # plus the task's noise key


@dataclass(frozen=True)
class RunSpec:
    """One run of the repeat: its axis values, its full ``--set`` list, its folder and its state."""

    method: str
    noise: str  # the noise label used in the folder name and the table
    seed: int
    overrides: tuple[str, ...]
    run_dir: Path
    state: str

    @property
    def name(self) -> str:
        """The run folder's name, ``<method>-<noise>-seed<k>``."""
        return self.run_dir.name

    @property
    def log(self) -> Path:
        """Where the run's worker output ends up: ``<run_dir>/log.txt``."""
        return self.run_dir / LOG_NAME


def parse_seeds(values: Sequence[str]) -> list[int]:
    """Seeds from ``--seeds`` values: each a number, a comma list or an inclusive range ``a..b``.

    Example:
        >>> parse_seeds(["0..2", "5,7", "1"])
        [0, 1, 2, 5, 7]
    """
    seeds: list[int] = []
    for item in parse_list(values, "--seeds"):
        low, sep, high = item.partition("..")
        try:
            span = range(int(low), int(high) + 1) if sep else [int(item)]
        except ValueError:
            raise UserError(f"--seeds: {item!r} is not a seed; use e.g. 0..4, 0,1,2 or --seeds 3") from None
        if sep and not span:
            raise UserError(f"--seeds: empty range {item!r}; the first seed must not exceed the last")
        if min(span) < 0:
            raise UserError(f"--seeds: {item!r}: seeds must be 0 or more")
        seeds.extend(seed for seed in span if seed not in seeds)
    return seeds


def parse_list(values: Sequence[str], option: str) -> list[str]:
    """Values of a repeatable option, each possibly a comma list; duplicates dropped, order kept.

    Example:
        >>> parse_list(["L1,L2", "L3", "L1"], "--noise")
        ['L1', 'L2', 'L3']
    """
    items = [part.strip() for value in values for part in str(value).split(",")]
    if any(not item for item in items):
        raise UserError(f"{option}: empty value in {list(values)}")
    return list(dict.fromkeys(items))


def run_state(run_dir: Path) -> str:
    """``finished``, ``evaluate``, ``resume`` or ``fresh`` (module docstring)."""
    if (run_dir / FINAL).is_file():
        return FINISHED if _evaluated_checkpoint(run_dir) == "final" else EVALUATE
    return RESUME if (run_dir / LAST).is_file() else FRESH


def _evaluated_checkpoint(run_dir: Path) -> Any:
    """The ``checkpoint`` that the run's ``summary.json`` evaluated; None without a readable one."""
    try:
        return json.loads((run_dir / SUMMARY_NAME).read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return None


def plan_runs(
    task: RepeatTask,
    config: Path,
    *,
    seeds: Sequence[int],
    noises: Sequence[str],
    methods: Sequence[str],
    overrides: Sequence[str],
    out: Path,
    queued: Collection[str] = (),
) -> list[RunSpec]:
    """Validate everything and list the runs, seed by seed (so early results cover the whole table).

    Args:
        task: The task of ``config``.
        config: The YAML config every run starts from.
        seeds: Non-empty list of seeds.
        noises: Noise values for the task's noise key; empty = the config's own.
        methods: Method names; empty = the config's own.
        overrides: The user's ``--set`` items (must not set the axis keys).
        out: The repeat's folder.
        queued: Names of runs whose submitit job is still queued or running (state ``queued``; their
            lock may be held by that job).

    Raises:
        UserError: Unknown method or noise, an axis key in ``--set``, a config error of any run, data the
            runs would need missing, a run folder holding something else, or a run another process
            is training.
    """
    _check_axes(task, seeds, methods, overrides)
    labels = [task.parse_noise(noise) for noise in noises] or [None]
    specs = []
    for seed in seeds:
        for noise in labels:
            for method in methods or [None]:
                axis = [f"train.seed={seed}"]
                axis += [f"method.name={method}"] if method is not None else []
                axis += [f"{task.noise_key}={noise}"] if noise is not None else []
                run_overrides = (*overrides, *axis)
                cfg = task.load(config, run_overrides)
                task.check(cfg)
                run_dir = out / f"{cfg.method.name}-{task.noise_of(cfg)}-seed{seed}"
                state = _existing_state(task, cfg, run_dir, queued=run_dir.name in queued)
                specs.append(
                    RunSpec(cfg.method.name, task.noise_of(cfg), seed, run_overrides, run_dir, state)
                )
    return specs


def _check_axes(
    task: RepeatTask, seeds: Sequence[int], methods: Sequence[str], overrides: Sequence[str]
) -> None:
    if not seeds:
        raise UserError("--seeds: give at least one seed, e.g. --seeds 0..4")
    for method in methods:
        if method not in task.methods:
            raise UserError(f"--methods: unknown method {method!r}; choose from {', '.join(task.methods)}")
    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in (*AXIS_KEYS, task.noise_key):
            option = {"method.name": "--methods", "train.seed": "--seeds"}.get(key, "--noise")
            raise UserError(f"--set {item!r}: repeat sets {key} itself; use {option} instead")


def _existing_state(task: RepeatTask, cfg: Any, run_dir: Path, *, queued: bool) -> str:
    """The run's state after checking that ``run_dir`` is free or holds this very run."""
    if not run_dir.exists():
        return QUEUED if queued else FRESH
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a folder; remove it or choose another --out")
    if not queued and is_locked(run_dir):
        raise UserError(f"{run_dir}: {BUSY}")
    saved = run_dir / CONFIG_NAME
    if saved.is_file():
        differing = _differing_keys(cfg, task.load(saved, ()))
        if differing:
            raise UserError(
                f"{saved}: this run folder holds a different experiment ({', '.join(differing)} differ); "
                "choose another --out or remove the folder"
            )
    elif any(path.is_file() and path.name not in (LOG_NAME, LOCK_NAME) for path in run_dir.rglob("*")):
        raise UserError(f"{run_dir}: not an mlbseg run folder (no {CONFIG_NAME}); choose another --out")
    return QUEUED if queued else run_state(run_dir)


def _differing_keys(given: Any, saved: Any) -> list[str]:
    """The dotted config keys whose value in ``given`` differs from ``saved``'s."""

    def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        items: dict[str, Any] = {}
        for key, value in tree.items():
            items.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return items

    mine, theirs = flat(to_dict(given)), flat(to_dict(saved))
    return [key for key in mine if mine[key] != theirs.get(key)]


def worker_job(
    task_name: str,
    config: Path,
    run_dir: Path,
    overrides: Sequence[str],
    *,
    out: Path,
    note: str = "",
    flags: Sequence[str] = (),
) -> Job:
    """The worker process for ``run_dir`` in the state it is in now (``fresh``, ``resume`` or ``evaluate``).

    A fresh run first loses what an attempt without a checkpoint left (its old log text is kept at the top
    of the new log), and its log is written to ``OUT/.<run>.log`` until the trainer has claimed the
    folder. ``note`` is added to the log's header line (e.g. the submitit job id), ``flags`` to the
    worker's command line.
    """
    state = run_state(run_dir)
    command = [sys.executable, "-m", "mlbseg.repeat.worker", "--task", task_name]
    command += ["--config", str(config.absolute()), "--run-dir", str(run_dir)]
    for item in overrides:
        command += ["--set", item]
    command += {RESUME: ["--resume"], EVALUATE: ["--evaluate-only"]}.get(state, [])
    command += flags
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    header = f"=== {stamp} mlbseg repeat: {state}{note} ===\n$ {shlex.join(command)}\n"
    log = run_dir / LOG_NAME
    if state != FRESH:
        return Job(run_dir.name, command, log, preamble=header)
    earlier = _clear_attempt(run_dir)
    pending = out / f".{run_dir.name}.log"
    return Job(run_dir.name, command, log, run_dir / CONFIG_NAME, pending, preamble=earlier + header)


def _clear_attempt(run_dir: Path) -> str:
    """Remove what an attempt without a checkpoint left (checked by the plan); return its old log."""
    if not run_dir.exists():
        return ""
    log = run_dir / LOG_NAME
    text = log.read_text(errors="replace") if log.is_file() else ""
    shutil.rmtree(run_dir)
    return text
