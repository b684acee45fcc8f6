"""A rich progress bar with ETA for one epoch, quiet when output is not a terminal."""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class EpochProgress:
    """``with EpochProgress("epoch 1/10", total) as bar: bar.update(done, loss=...)``."""

    def __init__(self, description: str, total: int, *, enabled: bool = True) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeRemainingColumn(),
            transient=False,
            disable=not enabled,  # e.g. every process but rank 0 under torchrun
        )
        self._task = self._progress.add_task(description, total=total, loss=float("nan"))

    def __enter__(self) -> EpochProgress:
        self._progress.start()
        return self

    def update(self, completed: int, loss: float) -> None:
        """Show ``completed`` steps and the running mean loss."""
        self._progress.update(self._task, completed=completed, loss=loss)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()
