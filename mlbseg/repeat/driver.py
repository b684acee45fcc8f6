"""``mlbseg repeat``: every (method, noise, seed) as an independent run, then one mean ± std table.

:func:`repeat` validates everything first (:func:`~mlbseg.repeat.plan.plan_runs`), skips finished runs,
resumes interrupted ones, runs the rest as worker processes (:mod:`~mlbseg.repeat.scheduler`,
:mod:`~mlbseg.repeat.worker`) and writes the table of what finished (:mod:`~mlbseg.repeat.table`). A lock
(``OUT/.lock``, :mod:`mlbseg.engine.lock`) keeps a second ``mlbseg repeat`` out of the same folder while
one is running. On SIGINT/SIGTERM every worker is stopped before :class:`~mlbseg.engine.signals.Interrupted`
leaves :func:`repeat`, with a hint that the same command continues: finished runs are skipped, interrupted
ones resume from their ``last.pt``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from mlbseg.engine.lock import folder_lock
from mlbseg.engine.signals import RESTART, Interrupted
from mlbseg.errors import UserError
from mlbseg.repeat import plan, scheduler
from mlbseg.repeat.table import FAILED, FINISHED, SKIPPED, RunRecord, aggregate, write_tables
from mlbseg.repeat.tasks import RepeatTask, detect_task

RESUME_HINT = f"{RESTART} (finished runs are kept, interrupted ones resume)"
BUSY = "another `mlbseg repeat` is running in this folder; wait for it"


@dataclass(frozen=True)
class RepeatResult:
    """What a repeat produced: its folder, the task, the table rows, every run's record, the files."""

    out: Path
    task: RepeatTask
    rows: list[dict[str, Any]]
    records: list[RunRecord]
    tables: list[Path]

    @property
    def failed(self) -> list[RunRecord]:
        """The runs that failed in this invocation."""
        return [record for record in self.records if record.status == FAILED]


def repeat(
    config: Path,
    *,
    seeds: Sequence[int],
    noises: Sequence[str] = (),
    methods: Sequence[str] = (),
    overrides: Sequence[str] = (),
    out: Path | None = None,
    jobs: int = 1,
    task: str = "auto",
    console: Console | None = None,
) -> RepeatResult:
    """Run (or continue) a repeat and write ``OUT/table.{md,csv,json}``.

    Args:
        config: The YAML config every run starts from.
        seeds: The seeds (``train.seed``); one run per seed, method and noise.
        noises: Values of the task's noise key (segmentation: L1, L2, L3, clean); empty = the config's.
        methods: Method names (``method.name``); empty = the config's.
        overrides: ``--set`` items applied to every run.
        out: The repeat's folder; default ``runs/<config name>-repeat``.
        jobs: Runs at a time (at most one per GPU where there are GPUs).
        task: ``auto``, ``seg`` or ``cls`` (:func:`~mlbseg.repeat.tasks.detect_task`).
        console: Where progress goes (default: a new rich console).

    Raises:
        UserError: Anything wrong with the input, found before any run starts.
    """
    console = console or Console()
    if jobs < 1:
        raise UserError(f"--jobs: must be 1 or more, got {jobs}")
    chosen = detect_task(config, task)
    base = chosen.load(config, overrides)
    out = out or Path("runs") / f"{base.name}-repeat"
    plan.plan_runs(  # every check, before any write
        chosen, config, seeds=seeds, noises=noises, methods=methods, overrides=overrides, out=out
    )
    try:
        with folder_lock(out, BUSY):
            # Read the run folders' states again under the lock: another repeat may have just finished.
            specs = plan.plan_runs(
                chosen, config, seeds=seeds, noises=noises, methods=methods, overrides=overrides, out=out
            )
            outcomes = _run_pending(chosen, config, specs, out=out, jobs=jobs, console=console)
            records = [_record(chosen, spec, outcomes.get(spec.name)) for spec in specs]
            rows = aggregate(chosen, records)
            title = f"{config.name} repeat in {out}: {len(specs)} runs"
            tables = write_tables(out, chosen, rows=rows, records=records, title=title)
    except Interrupted as err:  # the scheduler has stopped every worker; their run folders are resumable
        err.hint = RESUME_HINT
        raise
    return RepeatResult(out, chosen, rows, records, tables)


def _run_pending(
    task: RepeatTask, config: Path, specs: Sequence[plan.RunSpec], *, out: Path, jobs: int, console: Console
) -> dict[str, scheduler.Outcome]:
    """Start every unfinished run; return the outcomes by run name."""
    for spec in specs:
        if spec.state == plan.FINISHED:
            console.print(
                escape(f"skipped {spec.name}: finished earlier ({spec.run_dir / plan.SUMMARY_NAME})")
            )
    pending = [_job(task, config, spec, out) for spec in specs if spec.state != plan.FINISHED]
    if not pending:
        return {}
    slots = scheduler.make_slots(jobs, scheduler.gpu_ids() if _wants_gpu(task, config, specs) else [])
    if len(slots) < jobs:
        console.print(f"--jobs {jobs}: running {len(slots)} at a time, one per GPU")
    states = {spec.name: spec.state for spec in specs}

    def report(event: str, job: scheduler.Job, outcome: scheduler.Outcome | None) -> None:
        if outcome is None:
            console.print(escape(f"started {job.name} ({states[job.name]}); log: {job.log}"))
        elif outcome.returncode == 0:
            where = f" on GPU {outcome.gpu}" if outcome.gpu is not None else ""
            console.print(escape(f"finished {job.name} in {outcome.seconds:.0f} s{where}"))
        else:
            console.print(
                "[red]FAILED[/red] " + escape(f"{job.name} (exit {outcome.returncode}); see {job.log}")
            )

    outcomes = scheduler.run_jobs(pending, slots, report)
    return {outcome.job.name: outcome for outcome in outcomes}


def _wants_gpu(task: RepeatTask, config: Path, specs: Sequence[plan.RunSpec]) -> bool:
    """Pin runs to GPUs only when each pending run lets mlbseg choose (``train.device`` auto or cuda).

    A run on ``cpu`` needs no GPU slot, and one on an explicit ``cuda:N`` would not find its device in
    a one-GPU ``CUDA_VISIBLE_DEVICES``; such repeats run ``--jobs`` processes without pinning.
    """
    devices = {
        task.load(config, spec.overrides).train.device for spec in specs if spec.state != plan.FINISHED
    }
    return devices <= {"auto", "cuda"}


def _job(task: RepeatTask, config: Path, spec: plan.RunSpec, out: Path) -> scheduler.Job:
    command = [sys.executable, "-m", "mlbseg.repeat.worker", "--task", task.name]
    command += ["--config", str(config.absolute()), "--run-dir", str(spec.run_dir)]
    for item in spec.overrides:
        command += ["--set", item]
    command += {plan.RESUME: ["--resume"], plan.EVALUATE: ["--evaluate-only"]}.get(spec.state, [])
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    header = f"=== {stamp} mlbseg repeat: {spec.state} ===\n$ {shlex.join(command)}\n"
    if spec.state != plan.FRESH:
        return scheduler.Job(spec.name, command, spec.log, preamble=header)
    earlier = _clear_attempt(spec.run_dir)
    pending = out / f".{spec.name}.log"
    claim = spec.run_dir / plan.CONFIG_NAME
    return scheduler.Job(spec.name, command, spec.log, claim, pending, preamble=earlier + header)


def _clear_attempt(run_dir: Path) -> str:
    """Remove what an attempt without a checkpoint left (checked by the plan); return its old log."""
    if not run_dir.exists():
        return ""
    log = run_dir / plan.LOG_NAME
    text = log.read_text(errors="replace") if log.is_file() else ""
    shutil.rmtree(run_dir)
    return text


def _record(task: RepeatTask, spec: plan.RunSpec, outcome: scheduler.Outcome | None) -> RunRecord:
    """The run's table entry from its outcome (None: skipped) and its ``summary.json``."""
    status = SKIPPED if outcome is None else FINISHED
    values: dict[str, float | None] = {}
    if outcome is not None and outcome.returncode != 0:
        status = FAILED
    else:
        try:
            values = task.values(json.loads((spec.run_dir / plan.SUMMARY_NAME).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            status = FAILED  # the worker ended well but left no readable summary
    seconds = None if outcome is None else outcome.seconds
    return RunRecord(spec.method, spec.noise, spec.seed, spec.name, status, values, spec.log, seconds)
