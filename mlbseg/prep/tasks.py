"""Run one function over many cases, in worker processes when asked, with a rich progress bar.

Results come back in the order of the tasks, whatever order the workers finish in, so outputs never
depend on ``jobs``. Workers are started with ``spawn`` (fresh interpreters): safe next to the progress
bar's thread and the same on Linux, macOS and Windows. An exception in any task (a
:class:`~mlbseg.errors.UserError` included) cancels the tasks not yet started and is raised here.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


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
    with _progress() as progress:
        bar = progress.add_task(description, total=len(tasks))
        if jobs <= 1 or len(tasks) <= 1:
            results = []
            for task in tasks:
                results.append(function(*task))
                progress.advance(bar)
            return results
        context = multiprocessing.get_context("spawn")
        with (
            _single_threaded_children(),
            ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context) as pool,
        ):
            futures = [pool.submit(function, *task) for task in tasks]
            try:
                for future in as_completed(futures):
                    future.result()
                    progress.advance(bar)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            return [future.result() for future in futures]
