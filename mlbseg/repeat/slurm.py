"""``mlbseg repeat --launcher submitit``: every pending run as one job of a job array, through submitit.

The jobs go to submitit's :class:`~submitit.AutoExecutor` (folder ``OUT/.submitit``): on a machine with
Slurm (``srun`` on the PATH) one Slurm job array, elsewhere local processes (submitit's LocalExecutor, the
path the default tests take). docs/design.md §8 states the contract; in short:

- **The job** is :class:`RunJob`, a :class:`submitit.helpers.Checkpointable`. At every start it looks at
  the run folder (:func:`~mlbseg.repeat.plan.run_state`) and runs the repeat's worker process in the mode
  that fits (fresh, ``--resume`` from ``last.pt``, ``--evaluate-only``, or nothing when the run is
  finished), its stdout and stderr in the run's ``log.txt`` as with the process launcher. On submitit's
  preemption/time-limit signal (``USR2`` by default, ``SUBMITIT_PREEMPT_SIGNAL``) the job stops the
  worker (SIGINT: ``last.pt`` stays the last complete epoch) and submitit requeues it; the requeued job
  finds ``last.pt`` and resumes. A worker that fails makes the job fail (its table entry is "failed").
- **The worker process** ignores SIGTERM (``--ignore-sigterm``, and from its start) and the preemption
  signal: Slurm sends them to every process of the job (SIGTERM first when it preempts or cancels), and
  submitit's job passes over SIGTERM and acts on the preemption signal, so the job alone decides when its
  worker stops (with SIGINT, which the worker handles as it does SIGTERM elsewhere). The kernel sends
  the worker SIGINT if the job process dies (Linux ``PR_SET_PDEATHSIG``), so a killed job leaves no
  worker behind.
- **The job record** ``OUT/.submitit/jobs.json`` lists the jobs submitted since the last table: ``format``
  (1), ``cluster`` (``slurm`` or ``local``) and ``jobs`` {run name: {``job_id``, ``submitted``}}, written
  atomically after each submission. Running the same command again leaves runs whose job is still queued
  or running to that job (plan state ``queued``), collects the jobs that ended, and writes the table only
  when none is left; the record is emptied when the table is written.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable

from mlbseg.engine.atomic import write_text_atomic
from mlbseg.engine.lock import is_locked
from mlbseg.errors import UserError
from mlbseg.repeat import plan, scheduler

FOLDER = ".submitit"
RECORD_NAME = "jobs.json"
RECORD_FORMAT = 1
CPUS_PER_GPU = 4  # one for the training loop, the rest for evaluation's resampling and HD95 (and threads)
LOCAL_POLL_SECONDS = 0.5
CLUSTER_POLL_SECONDS = 30.0  # submitit asks sacct at most once a minute anyway
STOP_SECONDS = 30.0  # after cancelling local jobs: how long their workers may take to release their runs
PR_SET_PDEATHSIG = 1  # linux/prctl.h
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


@dataclass(frozen=True)
class ClusterOptions:
    """How the runs are submitted (``--launcher submitit``).

    Attributes:
        partition: Slurm partition; None = the cluster's default.
        gpus_per_run: GPUs of each job (``--gpus-per-node``); 0 = a CPU job.
        time_min: Each job's time limit in minutes; at the limit the job is requeued and resumes.
        array_parallelism: Jobs of the array running at once; None = submitit's default (256).
        wait: Wait for every job and write the table (always so without Slurm: the jobs are our children).
        on_submit: Called with {run name: job} right after a submission (to watch the jobs; tests use it
            to interrupt one).
    """

    partition: str | None = None
    gpus_per_run: int = 1
    time_min: int = 240
    array_parallelism: int | None = None
    wait: bool = False
    on_submit: Callable[[Mapping[str, submitit.Job]], None] | None = None

    def check(self) -> None:
        """UserError naming the option whose value is out of range."""
        if self.gpus_per_run < 0:
            raise UserError(f"--slurm-gpus-per-run: must be 0 or more, got {self.gpus_per_run}")
        if self.time_min < 1:
            raise UserError(f"--slurm-time: minutes, 1 or more, got {self.time_min}")
        if self.array_parallelism is not None and self.array_parallelism < 1:
            raise UserError(f"--slurm-array-parallelism: must be 1 or more, got {self.array_parallelism}")


def cpus_per_run(gpus_per_run: int) -> int:
    """CPU cores requested per job: ``CPUS_PER_GPU`` per GPU (a CPU job as much as a one-GPU job).

    Example:
        >>> cpus_per_run(1), cpus_per_run(2), cpus_per_run(0)
        (4, 8, 4)
    """
    return CPUS_PER_GPU * max(1, gpus_per_run)


class RunFailedError(RuntimeError):
    """The worker of a run ended with a non-zero exit code (the submitit job fails with this message)."""


class RunJob(Checkpointable):
    """The submitit job of one run: start the worker in the mode the run folder calls for, wait for it.

    Args:
        task_name: ``seg`` or ``cls``.
        config: The repeat's config file (absolute).
        run_dir: The run's folder.
        overrides: The run's full ``--set`` list.
        out: The repeat's folder (for a fresh run's pending log).
        threads: The worker's thread budget; None = the cores this job may use (its Slurm allocation).
    """

    def __init__(
        self,
        task_name: str,
        config: Path,
        run_dir: Path,
        overrides: Sequence[str],
        *,
        out: Path,
        threads: int | None = None,
    ) -> None:
        self.task_name, self.config, self.run_dir = task_name, Path(config), Path(run_dir)
        self.overrides, self.out, self.threads = tuple(overrides), Path(out), threads
        self._running: scheduler.Running | None = None

    def __call__(self) -> dict[str, float]:
        """Run the worker to its end; return ``{"seconds": wall time}``; RunFailedError if it failed."""
        if plan.run_state(self.run_dir) == plan.FINISHED:  # e.g. requeued after the worker had finished
            return {"seconds": 0.0}
        note = f" (submitit job {submitit.JobEnvironment().job_id})"
        flags = ["--ignore-sigterm"]  # Slurm's SIGTERM reaches every process; this job stops the worker
        job = plan.worker_job(
            self.task_name, self.config, self.run_dir, self.overrides, out=self.out, note=note, flags=flags
        )
        setup = functools.partial(_worker_setup, _preemption_signal())
        self._running = scheduler.start(job, None, self.threads or scheduler.cpu_count(), preexec=setup)
        try:
            while (outcome := scheduler.poll(self._running)) is None:
                time.sleep(scheduler.POLL_SECONDS)
        finally:
            scheduler.stop([self._running], signum=signal.SIGINT)
        if outcome.returncode != 0:
            raise RunFailedError(
                f"{self.run_dir.name}: worker exited with code {outcome.returncode}; see {job.log}"
            )
        return {"seconds": outcome.seconds}

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """On preemption or the time limit: stop the worker, then let submitit requeue this job as it is."""
        if self._running is not None:
            scheduler.stop([self._running], signum=signal.SIGINT)
        return super().checkpoint(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_running": None}  # the worker process stays with this job


def _preemption_signal() -> signal.Signals:
    """The signal submitit treats as preemption or time limit (its ``SUBMITIT_PREEMPT_SIGNAL``)."""
    return signal.Signals["SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")]


def _worker_setup(preemption: signal.Signals) -> None:
    """In the worker, before its command: leave SIGTERM and preemption to the job; stop with the job."""
    for signum in {signal.SIGTERM, preemption} - {signal.SIGINT}:  # SIGINT is how the job stops it
        signal.signal(signum, signal.SIG_IGN)
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGINT)


# --- submission and the job record ----------------------------------------------------------------------


def cluster_name() -> str:
    """Where submitit sends jobs from this machine: ``slurm`` (``srun`` on the PATH) or ``local``."""
    return submitit.AutoExecutor.which()


def make_executor(
    out: Path, options: ClusterOptions, *, cluster: str, has_gpus: bool
) -> submitit.AutoExecutor:
    """The AutoExecutor for ``cluster`` in ``OUT/.submitit`` with the options' resources (creates the folder).

    Without Slurm, a job asks for GPUs only when this machine has some (``has_gpus``); submitit's local
    executor then shows each job GPUs 0..gpus_per_run-1.
    """
    executor = submitit.AutoExecutor(folder=out / FOLDER, cluster=cluster)
    local_gpus = options.gpus_per_run if has_gpus else 0  # 0: the local job sees no GPU
    # On Slurm a CPU job asks for no --gpus-per-node at all (a cluster without GRES would refuse it)
    gpus = (options.gpus_per_run or None) if cluster == "slurm" else local_gpus
    executor.update_parameters(
        name=f"mlbseg-{out.name}",
        timeout_min=options.time_min,
        nodes=1,
        tasks_per_node=1,
        gpus_per_node=gpus,
        cpus_per_task=cpus_per_run(options.gpus_per_run),
        stderr_to_stdout=True,
        slurm_partition=options.partition,
        slurm_array_parallelism=options.array_parallelism,
    )
    return executor


def submit(
    executor: submitit.AutoExecutor,
    jobs: Mapping[str, RunJob],
) -> dict[str, submitit.Job]:
    """Submit ``jobs`` (run name → job) as one job array; return the submitted jobs by run name."""
    if not jobs:
        return {}
    with executor.batch():
        submitted = {name: executor.submit(job) for name, job in jobs.items()}
    return submitted


def record_path(out: Path) -> Path:
    """``OUT/.submitit/jobs.json``."""
    return out / FOLDER / RECORD_NAME


def read_record(out: Path, cluster: str) -> dict[str, submitit.Job]:
    """The jobs of the record, re-attached (their state is asked from ``cluster``); {} without a record.

    Raises:
        UserError: The record is damaged, or its jobs ran on Slurm and this machine has none.
    """
    path = record_path(out)
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text())
        recorded, entries = record["cluster"], record["jobs"]
        ids = {name: str(entry["job_id"]) for name, entry in entries.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path}: not a job record of mlbseg repeat; remove it (its runs resume)") from None
    if ids and recorded == "slurm" and cluster != "slurm":
        raise UserError(
            f"{path}: its jobs were submitted to Slurm; run this command where Slurm's sacct works"
        )
    job_class = submitit.SlurmJob if recorded == "slurm" else submitit.LocalJob
    return {name: job_class(folder=out / FOLDER, job_id=job_id) for name, job_id in ids.items()}


def write_record(out: Path, cluster: str, jobs: Mapping[str, submitit.Job]) -> None:
    """Write the record of ``jobs`` atomically (no jobs: an empty record)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    previous = _submitted_times(out)
    entries = {
        name: {"job_id": job.job_id, "submitted": previous.get(job.job_id, stamp)}
        for name, job in jobs.items()
    }
    document = {"format": RECORD_FORMAT, "cluster": cluster, "jobs": entries}
    write_text_atomic(record_path(out), json.dumps(document, indent=2) + "\n")


def _submitted_times(out: Path) -> dict[str, str]:
    try:
        entries = json.loads(record_path(out).read_text())["jobs"].values()
        return {str(entry["job_id"]): entry["submitted"] for entry in entries}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


# --- waiting ----------------------------------------------------------------------------------------------


def is_active(job: submitit.Job) -> bool:
    """Whether the job is queued or running (submitit's ``done`` asks Slurm's sacct, at most every minute)."""
    return not job.done()


def wait(
    jobs: Mapping[str, submitit.Job],
    *,
    poll_seconds: float,
    ended: Callable[[str, submitit.Job], None] = lambda name, job: None,
) -> None:
    """Return once every job has ended, calling ``ended(name, job)`` as each one does."""
    remaining = dict(jobs)
    while remaining:
        for name, job in list(remaining.items()):
            if not is_active(job):
                del remaining[name]
                ended(name, job)
        if remaining:
            time.sleep(poll_seconds)


def cancel_local(jobs: Mapping[str, submitit.Job], run_dirs: Sequence[Path]) -> None:
    """Cancel our local jobs and return once they and their workers have ended (bounded by STOP_SECONDS).

    submitit's local cancel sends SIGINT to a job's controller, which stops the job (SIGINT, then SIGKILL
    after a second); the job stops its worker, or the kernel does when the job dies (PR_SET_PDEATHSIG).
    The workers are gone once no run folder's lock is held.
    """
    for job in jobs.values():
        if is_active(job):
            job.cancel()
    deadline = time.monotonic() + STOP_SECONDS
    while time.monotonic() < deadline and (
        any(is_active(job) for job in jobs.values()) or any(is_locked(run_dir) for run_dir in run_dirs)
    ):
        time.sleep(0.1)


def seconds_of(job: submitit.Job) -> float | None:
    """The worker's wall time from the job's result; None when the job left no successful result."""
    if not job.paths.result_pickle.exists() or job.exception() is not None:
        return None
    return float(job.result()["seconds"])
