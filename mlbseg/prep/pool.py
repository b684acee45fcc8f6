"""A process pool for preparation: one function over many cases, with a rich progress bar.

Results come back in the order of the tasks, whatever order the workers finish in, so outputs never
depend on ``jobs``. Workers are started with ``spawn`` (fresh interpreters): safe next to the progress
bar's thread and the same on Linux, macOS and Windows. An exception in any task (a
:class:`~mlbseg.errors.UserError` included) or in this process (SIGINT/SIGTERM as
:class:`~mlbseg.engine.signals.Interrupted`) ends every worker at once and is raised here, after they
are gone, so no worker outlives the command or writes into a staging folder that is being removed.
The parent decides: workers keep SIGINT blocked, so a Ctrl-C in a terminal (sent to the whole process
group) reaches only this process, which ends them with SIGTERM; they print nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_MASKS = hasattr(signal, "pthread_sigmask")  # POSIX; Windows has no signal masks
_DEFERRED = {signal.SIGINT, signal.SIGTERM}


def _progress() -> Progress:
    """A progress bar on stderr, shown only when stderr is a terminal (logs and pipes stay clean)."""
    console = Console(stderr=True)
    columns = (TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    return Progress(*columns, console=console, disable=not console.is_terminal)


@contextmanager
def _single_threaded_children() -> Iterator[None]:
    """Start workers with BLAS/OpenMP on one thread each: ``jobs`` processes already share the cores.

    The variables are set only while the pool starts and runs; the parent's environment is restored.
    """
    saved = {name: os.environ.get(name) for name in _THREAD_VARIABLES}
    os.environ.update(dict.fromkeys(_THREAD_VARIABLES, "1"))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_tasks(
    function: Callable[..., T], tasks: Sequence[tuple[Any, ...]], jobs: int, description: str
) -> list[T]:
    """``[function(*task) for task in tasks]``, over ``jobs`` processes (1: in this process)."""
    if jobs > 1 and len(tasks) > 1:
        return _run_in_pool(function, tasks, min(jobs, len(tasks)), description)
    with _progress() as progress:
        bar = progress.add_task(description, total=len(tasks))
        results = []
        for task in tasks:
            results.append(function(*task))
            progress.advance(bar)
        return results


def _run_in_pool(
    function: Callable[..., T], tasks: Sequence[tuple[Any, ...]], workers: int, description: str
) -> list[T]:
    """The tasks over ``workers`` processes, all started before the progress bar's thread."""
    context = multiprocessing.get_context("spawn")
    initializer = _accept_sigterm if _MASKS else None
    with (
        _single_threaded_children(),
        ProcessPoolExecutor(workers, mp_context=context, initializer=initializer) as pool,
    ):
        try:
            with _signals_deferred():  # ``submit`` starts the workers
                futures = [pool.submit(function, *task) for task in tasks]
            with _progress() as progress:
                bar = progress.add_task(description, total=len(tasks))
                for future in as_completed(futures):
                    future.result()
                    progress.advance(bar)
        except BaseException:
            _end_workers(pool)
            raise
        return [future.result() for future in futures]


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block; one that arrives meanwhile is delivered after it.

    So no interruption lands between a worker's start and the pool's record of it (which
    :func:`_end_workers` reads). Only this thread's mask changes and a signal may reach any thread that
    does not block it, so the progress bar's thread starts after the block. The workers inherit the mask
    (fork and exec keep it): SIGINT stays blocked in them, and :func:`_accept_sigterm` lets SIGTERM
    through again.
    """
    if not _MASKS:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _accept_sigterm() -> None:
    """A worker's first step: SIGTERM (held back since its start) ends it again; SIGINT stays blocked."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Terminate every worker (mid-task), wait until each is gone, and drop the tasks not yet started."""
    # NOTE: ProcessPoolExecutor.terminate_workers() is public only from Python 3.14; its process table
    # (pid -> Process) is what that method uses.
    processes = list((pool._processes or {}).values())
    for process in processes:
        process.terminate()
    for process in processes:
        process.join()
    pool.shutdown(wait=True, cancel_futures=True)
