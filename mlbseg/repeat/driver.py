"""``mlbseg repeat``: every (method, noise, seed) as an independent run, then one mean ± std table.

:func:`repeat` validates everything first (:func:`~mlbseg.repeat.plan.plan_runs`), skips finished runs,
resumes interrupted ones, runs the rest and writes the table of what finished (:mod:`~mlbseg.repeat.table`)
with the per-case results and paired statistics (:mod:`~mlbseg.repeat.cases`).
Two launchers (docs/design.md §8): local worker processes, N at a time (:mod:`~mlbseg.repeat.scheduler`,
the default), or one submitit job per run (:mod:`~mlbseg.repeat.slurm`, given
:class:`~mlbseg.repeat.slurm.ClusterOptions`), whose table is written once no job of the repeat is queued
or running. A lock (``OUT/.lock``, :mod:`mlbseg.engine.lock`) keeps a second ``mlbseg repeat`` out of the
same folder while one is running. On SIGINT/SIGTERM every local worker (and local submitit job) is stopped
before :class:`~mlbseg.engine.signals.Interrupted` leaves :func:`repeat`, with a hint that the same command
continues: finished runs are skipped, interrupted ones resume from their ``last.pt``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit
from rich.console import Console
from rich.markup import escape

from mlbseg.engine.lock import folder_lock
from mlbseg.engine.signals import RESTART, Interrupted
from mlbseg.errors import UserError
from mlbseg.repeat import plan, scheduler, slurm
from mlbseg.repeat.cases import write_case_results
from mlbseg.repeat.table import FAILED, FINISHED, SKIPPED, RunRecord, aggregate, write_tables
from mlbseg.repeat.tasks import RepeatTask, detect_task

RESUME_HINT = f"{RESTART} (finished runs are kept, interrupted ones resume)"
BUSY = "another `mlbseg repeat` is running in this folder; wait for it"


@dataclass(frozen=True)
class Ended:
    """How a run of this invocation ended: whether its worker succeeded, and its wall time (if known)."""

    ok: bool
    seconds: float | None


@dataclass(frozen=True)
class RepeatResult:
    """What a repeat produced: its folder, the task, the table rows, every run's record, the files."""

    out: Path
    task: RepeatTask
    rows: list[dict[str, Any]]
    records: list[RunRecord]
    tables: list[Path]
    pending: dict[str, str] = field(default_factory=dict)  # run name -> job id still queued or running

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
    per_gpu: int | None = None,
    task: str = "auto",
    cluster: slurm.ClusterOptions | None = None,
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
        jobs: Runs at a time (process launcher).
        per_gpu: Runs per GPU at a time (process launcher, with GPUs); None = ⌈jobs / GPUs⌉.
        task: ``auto``, ``seg`` or ``cls`` (:func:`~mlbseg.repeat.tasks.detect_task`).
        cluster: Submit each run as a submitit job with these options instead of running local processes.
            Without ``wait`` on Slurm, the result has no table while jobs are queued or running
            (``pending``); the same call again collects it.
        console: Where progress goes (default: a new rich console).

    Raises:
        UserError: Anything wrong with the input, found before any run starts.
    """
    _check_launch(jobs, per_gpu, cluster)
    console = console or Console()
    if cluster is not None and jobs != 1:
        console.print(f"--jobs {jobs}: ignored with --launcher submitit (see --slurm-array-parallelism)")
    chosen = detect_task(config, task)
    base = chosen.load(config, overrides)
    out = out or Path("runs") / f"{base.name}-repeat"
    axes = {"seeds": seeds, "noises": noises, "methods": methods, "overrides": overrides, "out": out}
    plan.plan_runs(chosen, config, **axes, queued=_queued(out, cluster))  # every check, before any write
    try:
        with folder_lock(out, BUSY):
            # Read the run folders' states again under the lock: another repeat may have just finished.
            if cluster is None:
                specs = plan.plan_runs(chosen, config, **axes)
                ended = _run_processes(
                    chosen, config, specs, out=out, jobs=jobs, per_gpu=per_gpu, console=console
                )
            else:
                specs, ended, pending = _run_jobs(chosen, config, axes, cluster=cluster, console=console)
                if pending:
                    return RepeatResult(out, chosen, [], [], [], pending)
            records = [_record(chosen, spec, ended.get(spec.name)) for spec in specs]
            rows = aggregate(chosen, records)
            title = f"{config.name} repeat in {out}: {len(specs)} runs"
            tables = write_tables(out, chosen, rows=rows, records=records, title=title)
            tables += write_case_results(out, records)  # per-case results and paired statistics
            if cluster is not None:
                slurm.write_record(out, slurm.cluster_name(), {})  # every job is collected in this table
    except Interrupted as err:  # every local worker is stopped; their run folders are resumable
        err.hint = RESUME_HINT
        raise
    return RepeatResult(out, chosen, rows, records, tables)


def _check_launch(jobs: int, per_gpu: int | None, cluster: slurm.ClusterOptions | None) -> None:
    if jobs < 1:
        raise UserError(f"--jobs: must be 1 or more, got {jobs}")
    if per_gpu is not None and per_gpu < 1:
        raise UserError(f"--per-gpu: must be 1 or more, got {per_gpu}")
    if cluster is not None:
        if per_gpu is not None:
            raise UserError("--per-gpu: only with --launcher process; a submitit job holds one run")
        cluster.check()


def _queued(out: Path, cluster: slurm.ClusterOptions | None) -> dict[str, str]:
    """Runs whose recorded submitit job is still queued or running: {run name: job id}."""
    if cluster is None:
        return {}
    jobs = slurm.read_record(out, slurm.cluster_name())
    return {name: job.job_id for name, job in jobs.items() if slurm.is_active(job)}


def _run_processes(
    task: RepeatTask,
    config: Path,
    specs: Sequence[plan.RunSpec],
    *,
    out: Path,
    jobs: int,
    per_gpu: int | None,
    console: Console,
) -> dict[str, Ended]:
    """Start every unfinished run as a local worker process; return how each ended, by run name."""
    _print_skipped(specs, console)
    pending = [spec for spec in specs if spec.state != plan.FINISHED]
    if not pending:
        return {}
    gpus = scheduler.gpu_ids() if _wants_gpu(task, config, specs) else []
    if per_gpu is not None and not gpus:
        console.print(f"--per-gpu {per_gpu}: ignored, these runs use no GPU")
    per = per_gpu or scheduler.default_per_gpu(jobs, len(gpus))
    slots = scheduler.make_slots(jobs, gpus, per)
    if len(slots) < jobs:
        console.print(f"--jobs {jobs}: running {len(slots)} at a time, {per} per GPU on {len(gpus)} GPU(s)")
    states = {spec.name: spec.state for spec in specs}
    workers = [plan.worker_job(task.name, config, spec.run_dir, spec.overrides, out=out) for spec in pending]

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

    outcomes = scheduler.run_jobs(workers, slots, report)
    return {outcome.job.name: Ended(outcome.returncode == 0, outcome.seconds) for outcome in outcomes}


def _run_jobs(
    task: RepeatTask,
    config: Path,
    axes: Mapping[str, Any],
    *,
    cluster: slurm.ClusterOptions,
    console: Console,
) -> tuple[list[plan.RunSpec], dict[str, Ended], dict[str, str]]:
    """Submit every run that has no job, then wait (always without Slurm, else with ``--wait``).

    Returns the plan, how the runs whose jobs ended since the last table did so, and the runs whose jobs
    are still queued or running ({} once all have ended: then the table is due). A run whose job ended
    without finishing it is collected as failed; the next invocation submits it again.
    """
    out: Path = axes["out"]
    tracked = slurm.read_record(out, slurm.cluster_name())
    queued = {run: job for run, job in tracked.items() if slurm.is_active(job)}
    specs = plan.plan_runs(task, config, **axes, queued=queued)
    _print_skipped([spec for spec in specs if spec.name not in tracked], console)
    for run, job in queued.items():
        console.print(escape(f"queued {run}: job {job.job_id}"))
    unsubmitted = [spec for spec in specs if spec.state != plan.FINISHED and spec.name not in tracked]
    submitted, local = _submit(task, config, unsubmitted, out=out, cluster=cluster, console=console)
    jobs = {**tracked, **submitted}
    if submitted:
        slurm.write_record(out, "local" if local else "slurm", jobs)
    active = {**queued, **submitted}
    try:
        if cluster.on_submit is not None and submitted:
            cluster.on_submit(submitted)
        if not local and not cluster.wait:
            pending = {run: job.job_id for run, job in active.items() if slurm.is_active(job)}
            if pending:
                return specs, {}, pending
        _wait(active, local=local, out=out, console=console)
    except BaseException:
        _stop_waiting(active, local=local, out=out, console=console)
        raise
    runs = {spec.name: spec.run_dir for spec in specs}
    ended = {
        run: Ended(plan.run_state(runs[run]) == plan.FINISHED, slurm.seconds_of(job))
        for run, job in jobs.items()
        if run in runs
    }
    return specs, ended, {}


def _submit(
    task: RepeatTask,
    config: Path,
    specs: Sequence[plan.RunSpec],
    *,
    out: Path,
    cluster: slurm.ClusterOptions,
    console: Console,
) -> tuple[dict[str, submitit.Job], bool]:
    """Submit one job array of ``specs``; return the jobs by run name and whether they run locally."""
    name = slurm.cluster_name()
    local = name != "slurm"
    if not specs:
        return {}, local
    if local:
        console.print("no Slurm here: the jobs run as local processes, all at once; waiting for them")
    has_gpus = local and _wants_gpu(task, config, specs) and bool(scheduler.gpu_ids())
    executor = slurm.make_executor(out, cluster, cluster=name, has_gpus=has_gpus)
    threads = max(1, scheduler.cpu_count() // len(specs)) if local else None  # local jobs share the cores
    runs = {
        spec.name: slurm.RunJob(
            task.name, config.absolute(), spec.run_dir, spec.overrides, out=out, threads=threads
        )
        for spec in specs
    }
    submitted = slurm.submit(executor, runs)
    for spec in specs:
        job = submitted[spec.name].job_id
        console.print(escape(f"submitted {spec.name} ({spec.state}) as job {job}; log: {spec.log}"))
    return submitted, local


def _wait(jobs: Mapping[str, submitit.Job], *, local: bool, out: Path, console: Console) -> None:
    """Wait for ``jobs``, reporting each as it ends."""

    def report(run: str, job: submitit.Job) -> None:
        log = out / run / plan.LOG_NAME
        if plan.run_state(out / run) == plan.FINISHED:
            console.print(escape(f"finished {run} (job {job.job_id})"))
        else:
            console.print("[red]FAILED[/red] " + escape(f"{run} (job {job.job_id}, {job.state}); see {log}"))

    poll = slurm.LOCAL_POLL_SECONDS if local else slurm.CLUSTER_POLL_SECONDS
    slurm.wait(jobs, poll_seconds=poll, ended=report)


def _stop_waiting(jobs: Mapping[str, submitit.Job], *, local: bool, out: Path, console: Console) -> None:
    """After an exception while jobs run: cancel local ones (our children), leave cluster ones running."""
    if local:  # the cancelled runs are not failures: the next invocation resumes them
        slurm.cancel_local(jobs, [out / run for run in jobs])
        slurm.write_record(out, "local", {})
    elif jobs:
        ids = ", ".join(sorted(job.job_id for job in jobs.values()))
        console.print(escape(f"the jobs keep running on the cluster ({ids}); the same command collects them"))


def _print_skipped(specs: Sequence[plan.RunSpec], console: Console) -> None:
    for spec in specs:
        if spec.state == plan.FINISHED:
            console.print(
                escape(f"skipped {spec.name}: finished earlier ({spec.run_dir / plan.SUMMARY_NAME})")
            )


def _wants_gpu(task: RepeatTask, config: Path, specs: Sequence[plan.RunSpec]) -> bool:
    """Pin runs to GPUs only when each pending run lets mlbseg choose (``train.device`` auto or cuda).

    A run on ``cpu`` needs no GPU slot, and one on an explicit ``cuda:N`` would not find its device in
    a one-GPU ``CUDA_VISIBLE_DEVICES``; such repeats run ``--jobs`` processes without pinning.
    """
    devices = {
        task.load(config, spec.overrides).train.device for spec in specs if spec.state != plan.FINISHED
    }
    return devices <= {"auto", "cuda"}


def _record(task: RepeatTask, spec: plan.RunSpec, ended: Ended | None) -> RunRecord:
    """The run's table entry from how it ended (None: skipped) and its ``summary.json``."""
    status = SKIPPED if ended is None else FINISHED
    values: dict[str, float | None] = {}
    if ended is not None and not ended.ok:
        status = FAILED
    else:
        try:
            values = task.values(json.loads((spec.run_dir / plan.SUMMARY_NAME).read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            status = FAILED  # the worker ended well but left no readable summary
    seconds = None if ended is None else ended.seconds
    return RunRecord(spec.method, spec.noise, spec.seed, spec.name, status, values, spec.log, seconds)
