"""Training curves from runs' ``metrics.csv``: one panel per metric, one line per run, x = epoch.

``metrics.csv`` has a header row and one row per logged epoch; every cell is a number or empty (a metric not
logged that epoch, e.g. validation every k epochs). Empty cells are skipped, so a panel's line joins the
epochs where its metric exists.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

from mlbseg.errors import UserError
from mlbseg.figures import DPI, new_figure, save_png

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


def _series(rows: Sequence[Mapping[str, float]], metric: str) -> tuple[list[float], list[float]]:
    points = [(row[X_KEY], row[metric]) for row in rows if metric in row and X_KEY in row]
    points = [(x, y) for x, y in points if math.isfinite(y)]
    return [x for x, _ in points], [y for _, y in points]


def draw_curves(
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    metrics: Sequence[str] = ("train_loss", "val_dice"),
    *,
    panel_size: tuple[float, float] = (3.5, 2.6),
) -> Figure:
    """Draw one panel per metric with one line per run (Figure 3 style) and a shared legend.

    Args:
        runs: ``{run name: rows}``, rows as returned by :func:`read_metrics_csv` (each needs ``epoch``).
        metrics: Column names to plot, one panel each, left to right.
        panel_size: (width, height) of one panel in inches; the figure is ``len(metrics) × width`` wide and
            ``height + LEGEND_INCHES`` tall.

    Raises:
        UserError: No runs or metrics, or a metric present in none of the runs (the message lists the
            columns that exist).
    """
    if not runs or not metrics:
        raise UserError("curves need at least one run and one metric")
    series = {metric: {name: _series(rows, metric) for name, rows in runs.items()} for metric in metrics}
    for metric, lines in series.items():
        if not any(xs for xs, _ in lines.values()):
            columns = sorted({key for rows in runs.values() for row in rows for key in row} - {X_KEY})
            raise UserError(f"metric '{metric}' has no values with an epoch in any run; columns: {columns}")
    width, height = panel_size
    figure = new_figure(width * len(metrics), height + LEGEND_INCHES)
    axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    for ax, (metric, lines) in zip(axes, series.items(), strict=True):
        for color_index, (name, (xs, ys)) in enumerate(lines.items()):
            ax.plot(
                xs,
                ys,
                color=f"C{color_index % 10}",
                linewidth=1.5,
                label=name,
                marker="o" if len(xs) == 1 else None,  # a lone point would not show as a line
                markersize=3,
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric.replace("_", " "))
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(
        handles, labels, loc="outside lower center", ncols=min(len(labels), 5), frameon=False, fontsize=8
    )
    return figure


def curves_figure(
    runs: Mapping[str, Sequence[Mapping[str, float]]],
    out_path: str | Path,
    metrics: Sequence[str] = ("train_loss", "val_dice"),
    *,
    panel_size: tuple[float, float] = (3.5, 2.6),
    dpi: int = DPI,
    overwrite: bool = False,
) -> Path:
    """Draw :func:`draw_curves` and save it as a PNG (``dpi`` pixels per inch); return ``out_path``."""
    return save_png(draw_curves(runs, metrics, panel_size=panel_size), out_path, dpi, overwrite=overwrite)
