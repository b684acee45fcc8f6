"""Run a list of commands as separate processes, N at a time, each pinned to a GPU or a share of the CPU.

Slots (:func:`make_slots`): with CUDA GPUs, up to ``per_gpu`` processes per GPU, spread round-robin (the
driver's default packs ``--jobs N`` onto G GPUs as ⌈N / G⌉ each, docs/design.md §8), and a process sees
only its slot's GPU through ``CUDA_VISIBLE_DEVICES``; without GPUs, ``jobs`` CPU slots. Either way every
process gets ``OMP_NUM_THREADS = cores // slots`` (unless the user set it), so N processes do not
oversubscribe the cores.

Logs: a process's stdout and stderr go to its log file from the first byte. A fresh run's folder must be
empty when its trainer starts, so its log is written beside the folder first (``OUT/.<run>.log``) and moved
into ``<run_dir>/log.txt`` as soon as the trainer has claimed the folder (its ``config.yaml`` exists) or the
process has ended; the open file keeps being written under its new name (POSIX rename semantics).

Stopping: on any exception in :func:`run_jobs` (SIGINT/SIGTERM as
:class:`~mlbseg.engine.signals.Interrupted` included) every running process gets SIGTERM at once, those
still alive after ``GRACE_SECONDS`` get SIGKILL, and each is waited for, so none outlives the command;
their pending logs are moved into place as if they had ended. The processes share the terminal's process
group, so a Ctrl-C reaches them too; the worker stops on either signal in the same way. :func:`start`,
:func:`poll` and :func:`stop` are the same steps for one process, for a caller that waits itself (the
submitit job, :mod:`~mlbseg.repeat.slurm`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

POLL_SECONDS = 0.2
GRACE_SECONDS = 5.0  # from SIGTERM to SIGKILL: a worker needs well under a second to stop
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class Job:
    """One process to run.

    Attributes:
        name: Shown in progress messages.
        command: argv of the process.
        log: The log's final path.
        claim: The process owns ``log.parent`` once this file exists (fresh runs: the run's config.yaml).
        pending_log: Where the log is written until ``claim`` exists; None = write ``log`` directly.
        preamble: Text written at the top of the log (e.g. an earlier attempt's log and the command).
    """

    name: str
    command: list[str]
    log: Path
    claim: Path | None = None
    pending_log: Path | None = None
    preamble: str = ""


@dataclass
class Outcome:
    """How a job ended: its exit code, its wall time and the GPU it was given (None: not pinned)."""

    job: Job
    returncode: int
    seconds: float
    gpu: str | None


@dataclass
class Running:
    """A started job: its process, its open log, when it started, its GPU, whether its log is in place."""

    job: Job
    process: subprocess.Popen
    stream: IO[bytes]
    started: float
    gpu: str | None
    placed: bool = field(default=False)


def cpu_count() -> int:
    """Cores this process may use (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def gpu_ids() -> list[str]:
    """CUDA device ids a child may be given: those in ``CUDA_VISIBLE_DEVICES``, else ``0..count-1``."""
    import torch

    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(index) for index in range(count)]
    return [item.strip() for item in visible.split(",") if item.strip()][:count]


def make_slots(jobs: int, gpus: Sequence[str], per_gpu: int = 1) -> list[str | None]:
    """One entry per concurrent process: a GPU id, or None for a CPU process.

    With GPUs, ``min(jobs, per_gpu · len(gpus))`` slots, the GPUs taken round-robin, so runs spread over
    every GPU before any GPU gets a second one.

    Example:
        >>> make_slots(3, ["0", "1"]), make_slots(5, ["0", "1"], per_gpu=2), make_slots(2, [])
        (['0', '1'], ['0', '1', '0', '1'], [None, None])
    """
    if not gpus:
        return [None] * jobs
    count = min(jobs, per_gpu * len(gpus))
    return [gpus[index % len(gpus)] for index in range(count)]


def default_per_gpu(jobs: int, gpu_count: int) -> int:
    """Processes per GPU when ``--per-gpu`` is not given: ⌈jobs / GPUs⌉, so all ``jobs`` run at once.

    Example:
        >>> default_per_gpu(8, 2), default_per_gpu(3, 2), default_per_gpu(1, 4)
        (4, 2, 1)
    """
    return max(1, -(-jobs // max(1, gpu_count)))


def child_env(gpu: str | None, threads: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of one process: its GPU (if any) and its thread budget (unless set by the user)."""
    env = dict(os.environ if base is None else base)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    if "OMP_NUM_THREADS" not in env:
        env.update({name: str(threads) for name in THREAD_VARIABLES})
    return env


def run_jobs(
    jobs: Sequence[Job],
    slots: Sequence[str | None],
    report: Callable[[str, Job, Outcome | None], None] = lambda event, job, outcome: None,
) -> list[Outcome]:
    """Run ``jobs`` in order, ``len(slots)`` at a time; return their outcomes in completion order.

    ``report(event, job, outcome)`` is called with ``"start"`` (outcome None) and ``"end"``. On any
    exception (SIGINT and SIGTERM included) the running processes are stopped before it propagates.
    """
    threads = max(1, cpu_count() // max(1, len(slots)))
    queue, free = deque(jobs), deque(range(len(slots)))
    running: dict[int, Running] = {}
    outcomes: list[Outcome] = []
    try:
        while queue or running:
            while queue and free:
                slot = free.popleft()
                job = queue.popleft()
                running[slot] = start(job, slots[slot], threads)
                report("start", job, None)
            time.sleep(POLL_SECONDS)
            for slot, run in list(running.items()):
                outcome = poll(run)
                if outcome is not None:
                    del running[slot]
                    free.append(slot)
                    outcomes.append(outcome)
                    report("end", run.job, outcome)
    finally:
        stop(list(running.values()))
    return outcomes


def start(job: Job, gpu: str | None, threads: int, *, preexec: Callable[[], None] | None = None) -> Running:
    """Start ``job``'s process with its log open; ``preexec`` runs in the child before the command."""
    target = job.pending_log or job.log
    target.parent.mkdir(parents=True, exist_ok=True)
    stream = target.open("ab")
    stream.write(job.preamble.encode())
    stream.flush()
    try:
        process = subprocess.Popen(
            job.command,
            stdout=stream,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=child_env(gpu, threads),
            preexec_fn=preexec,
        )
    except BaseException:
        stream.close()
        raise
    return Running(job, process, stream, time.monotonic(), gpu, placed=job.pending_log is None)


def poll(run: Running) -> Outcome | None:
    """Move a pending log into place when due; the job's outcome once its process has ended."""
    returncode = run.process.poll()
    if not run.placed and (returncode is not None or (run.job.claim is not None and run.job.claim.exists())):
        _place_log(run.job)
        run.placed = True
    if returncode is None:
        return None
    run.stream.close()
    return Outcome(run.job, returncode, time.monotonic() - run.started, run.gpu)


def _place_log(job: Job) -> None:
    assert job.pending_log is not None
    job.log.parent.mkdir(parents=True, exist_ok=True)
    os.replace(job.pending_log, job.log)


def stop(runs: Sequence[Running], *, signum: int = signal.SIGTERM) -> None:
    """Stop our own processes: ``signum`` to all, SIGKILL to those alive after the grace; wait; close logs.

    Runs that have already ended are only closed; calling it again does nothing more.
    """
    for run in runs:
        if run.process.poll() is None:
            run.process.send_signal(signum)
    deadline = time.monotonic() + GRACE_SECONDS
    for run in runs:
        try:
            run.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.process.wait()
        run.stream.close()
        if not run.placed:
            _place_log(run.job)
            run.placed = True
