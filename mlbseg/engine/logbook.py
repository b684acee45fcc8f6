"""Per-epoch metrics in ``metrics.csv`` and TensorBoard scalars, both consistent after a resume.

The metric history lives in the checkpoint; ``metrics.csv`` is rewritten from it (atomically) after every
epoch, so a run killed between the CSV and the checkpoint never shows an epoch twice. TensorBoard events
past the resumed step are purged by ``SummaryWriter(purge_step=...)``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from mlbseg.engine.atomic import write_text_atomic


class Logbook:
    """Collects one row of scalars per epoch and mirrors them to CSV and TensorBoard."""

    def __init__(self, run_dir: Path, history: list[dict[str, float]], purge_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.history = list(history)
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        """Write ``values`` to TensorBoard as ``prefix/name`` at ``step``."""
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Record one epoch's row (must contain ``epoch``) and rewrite ``metrics.csv``."""
        self.history.append(row)
        self.scalars("epoch", {k: v for k, v in row.items() if k != "epoch"}, row["epoch"])
        self.writer.flush()
        write_csv(self.history, self.run_dir / "metrics.csv")

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        self.writer.close()


class QuietLogbook:
    """What a process other than rank 0 gets for a :class:`Logbook`: nothing is written."""

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        """Ignore ``values``."""

    def close(self) -> None:
        """Nothing to close."""


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` to ``path`` atomically; columns: every key in order of appearance, blank if absent."""
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row)) or ["epoch"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
