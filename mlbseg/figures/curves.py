"""Training curves from runs' ``metrics.csv``: one panel per metric, one line per label, x = epoch.

``metrics.csv`` has a header row and one row per logged epoch; every cell is a number or empty (a metric not
logged that epoch, e.g. validation every k epochs). Empty cells are skipped, so a panel's line joins the
epochs where its metric exists. Several runs under one label (the seeds of a method) are drawn as their mean
with a band of ± one sample standard deviation, over the epochs where every one of them has the metric.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mlbseg.errors import UserError
from mlbseg.figures import DPI, new_figure, save_figure

X_KEY = "epoch"
LEGEND_INCHES = 0.4


def read_metrics_csv(path: str | Path) -> list[dict[str, float]]:
    """Read a ``metrics.csv`` into one ``{column: value}`` dict per row, with empty cells left out.

    Raises:
        UserError: The file is missing, empty (no header), or a cell is not a number (naming line and column).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a run's metrics.csv)")
    with path.open(newline="") as stream:
        reader = csv.DictReader(stream)
        if not reader.fieldnames:
            raise UserError(f"{path}: empty file, expected a header row of metric names")
        rows = []
        for row in reader:
            values = {}
            for column, cell in row.items():
                if column is None or cell is None or not cell.strip():
                    continue
                try:
                    values[column] = float(cell)
                except ValueError:
                    raise UserError(
                        f"{path}: line {reader.line_num}, column '{column}': '{cell}' is not a number"
                    ) from None
            rows.append(values)
    return rows


Rows = Sequence[Mapping[str, float]]


def _series(rows: Rows, metric: str) -> dict[float, float]:
    """{epoch: value} of ``metric`` in one run (finite values only)."""
    return {
        row[X_KEY]: row[metric]
        for row in rows
        if metric in row and X_KEY in row and math.isfinite(row[metric])
    }


def aggregate(runs: Sequence[Rows], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Epochs [E], mean [E] and sample std [E] (0 for one run) of ``metric`` over ``runs``.

    Only the epochs where every run has a value are kept, so the mean never mixes different run counts.

    Example:
        >>> aggregate([[{"epoch": 0, "d": 0.5}, {"epoch": 1, "d": 0.7}], [{"epoch": 1, "d": 0.9}]], "d")
        (array([1.]), array([0.8]), array([0.14142136]))
    """
    series = [_series(rows, metric) for rows in runs]
    epochs = sorted(set.intersection(*(set(values) for values in series))) if series else []
    values = np.array([[values[epoch] for epoch in epochs] for values in series], dtype=np.float64)
    std = values.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(len(epochs))
    return np.array(epochs, dtype=np.float64), values.mean(axis=0) if epochs else np.zeros(0), std


def _draw_line(ax: Axes, runs: Sequence[Rows], metric: str, *, color: str, label: str) -> None:
    epochs, mean, std = aggregate(runs, metric)
    name = label if len(runs) == 1 else f"{label} (n={len(runs)})"
    ax.plot(
        epochs,
        mean,
        color=color,
        linewidth=1.5,
        label=name,
        marker="o" if len(epochs) == 1 else None,  # a lone point would not show as a line
        markersize=3,
    )
    if len(runs) > 1:
        ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def draw_curves(
    runs: Mapping[str, Sequence[Rows]],
    metrics: Sequence[str] = ("train_loss", "meta_dice"),
    *,
    panel_size: tuple[float, float] = (3.5, 2.6),
) -> Figure:
    """Draw one panel per metric with one line per label (Figure 3 style) and a shared legend.

    Args:
        runs: ``{label: [rows of each run]}``, rows as returned by :func:`read_metrics_csv` (each needs
            ``epoch``); several runs under one label are drawn as mean ± sample std.
        metrics: Column names to plot, one panel each, left to right.
        panel_size: (width, height) of one panel in inches; the figure is ``len(metrics) × width`` wide and
            ``height + LEGEND_INCHES`` tall.

    Raises:
        UserError: No runs or metrics, or a metric present in none of the runs (the message lists the
            columns that exist).
    """
    if not runs or not metrics:
        raise UserError("curves need at least one run and one metric")
    every_run = [rows for group in runs.values() for rows in group]
    for metric in metrics:
        if not any(_series(rows, metric) for rows in every_run):
            columns = sorted({key for rows in every_run for row in rows for key in row} - {X_KEY})
            raise UserError(f"metric '{metric}' has no values with an epoch in any run; columns: {columns}")
    width, height = panel_size
    figure = new_figure(width * len(metrics), height + LEGEND_INCHES)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics, strict=True):
        for color_index, (label, group) in enumerate(runs.items()):
            _draw_line(ax, group, metric, color=f"C{color_index % 10}", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), 5), frameon=False, fontsize=8
    )
    return figure


def curves_figure(
    runs: Mapping[str, Sequence[Rows]],
    out_path: str | Path,
    metrics: Sequence[str] = ("train_loss", "meta_dice"),
    *,
    panel_size: tuple[float, float] = (3.5, 2.6),
    dpi: int = DPI,
    overwrite: bool = False,
) -> Path:
    """Draw :func:`draw_curves` and save it (PNG/PDF/SVG by extension); return ``out_path``."""
    return save_figure(draw_curves(runs, metrics, panel_size=panel_size), out_path, dpi, overwrite=overwrite)
