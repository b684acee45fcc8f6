"""Per-epoch metrics in ``metrics.csv`` and TensorBoard scalars, both consistent after a resume.

The metric history lives in the checkpoint; ``metrics.csv`` is rewritten from it (atomically) after every
epoch, so a run killed between the CSV and the checkpoint never shows an epoch twice. TensorBoard events
past the resumed step are purged by ``SummaryWriter(purge_step=...)``. At the end of a run its
hyper-parameters (the flattened config) and final metrics go to TensorBoard's HPARAMS tab
(``tensorboard/hparams``, written afresh when a run ends again), so runs compare side by side.
"""

from __future__ import annotations

import csv
import io
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlbseg.engine.atomic import write_text_atomic

HPARAMS = "hparams"


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

    def figures(self, figures: Mapping[str, Any], step: int) -> None:
        """Matplotlib figures as TensorBoard images ``figures/<name>`` at ``step`` (each closed after)."""
        for name, figure in figures.items():
            self.writer.add_figure(f"figures/{name}", figure, step, close=True)

    def hparams(self, config: Mapping[str, Any], final_row: Mapping[str, Any]) -> None:
        """The run's hyper-parameters (``config`` flattened) with its final finite metrics as ``final/…``."""
        folder = self.run_dir / "tensorboard" / HPARAMS
        shutil.rmtree(folder, ignore_errors=True)  # a run that ends again replaces its record
        metrics = {
            f"final/{name}": float(value)
            for name, value in final_row.items()
            if name != "epoch" and isinstance(value, int | float) and math.isfinite(value)
        }
        self.writer.add_hparams(flat_hparams(config), metrics, run_name=HPARAMS)

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        self.writer.close()


class QuietLogbook:
    """What a process other than rank 0 gets for a :class:`Logbook`: nothing is written."""

    def scalars(self, prefix: str, values: dict[str, float], step: int) -> None:
        """Ignore ``values``."""

    def hparams(self, config: Mapping[str, Any], final_row: Mapping[str, Any]) -> None:
        """Ignore the record."""

    def close(self) -> None:
        """Nothing to close."""


def flat_hparams(config: Mapping[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """``{"optim.lr": 0.005, ...}``: nested sections joined by dots; lists and None as text.

    TensorBoard's hyper-parameters take numbers, booleans and strings only.

    Example:
        >>> flat_hparams({"name": "smoke", "optim": {"lr": 0.1, "betas": [0.9, 0.99]}, "seed": None})
        {'name': 'smoke', 'optim.lr': 0.1, 'optim.betas': '[0.9, 0.99]', 'seed': 'None'}
    """
    flat: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flat_hparams(value, f"{name}."))
        else:
            flat[name] = value if isinstance(value, bool | int | float | str) else str(value)
    return flat


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Write ``rows`` to ``path`` atomically; columns: every key in order of appearance, blank if absent."""
    buffer = io.StringIO()
    fields = list(dict.fromkeys(key for row in rows for key in row)) or ["epoch"]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())
