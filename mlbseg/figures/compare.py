"""Per-case results of a repeat: one panel per noise level, a box and the points of each method.

Every point is one test case of one seed's run, so the spread shows what a mean ± std over seeds hides:
cases a method fails on, and how consistently it beats another. Boxes span the quartiles with the median
line; whiskers reach the furthest points within 1.5 × the inter-quartile range; the points lie on top,
spread sideways by a seeded jitter (the same figure for the same results).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from mlbseg.errors import UserError
from mlbseg.figures import DPI, new_figure, save_figure

METRICS = {"dice": ("Dice (%)", 100.0), "hd95": ("HD95 (mm)", 1.0)}  # name -> axis label, scale
JITTER = 0.12  # half-width of the points' sideways spread, in box widths


def draw_compare(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    metric: str = "dice",
    *,
    panel_size: tuple[float, float] = (3.2, 2.8),
) -> Figure:
    """Draw one panel per noise level with a box and the per-case points of each method.

    Args:
        values: ``{noise: {method: [value per (seed, case)]}}``; methods in the order to draw; non-finite
            values (HD95 of an empty prediction) are left out and counted in the axis label.
        metric: A key of :data:`METRICS`.
        panel_size: (width, height) of one panel in inches.

    Raises:
        UserError: Nothing to draw, or an unknown metric.
    """
    if metric not in METRICS:
        raise UserError(f"--metric {metric}: choose one of {', '.join(METRICS)}")
    if not any(any(len(v) for v in methods.values()) for methods in values.values()):
        raise UserError("no per-case results to draw (no run has a summary.json with test cases)")
    label, scale = METRICS[metric]
    width, height = panel_size
    figure = new_figure(width * len(values), height)
    axes = figure.subplots(1, len(values), squeeze=False, sharey=True)[0]
    rng = np.random.default_rng(0)
    for ax, (noise, methods) in zip(axes, values.items(), strict=True):
        names = list(methods)
        finite = [np.asarray([v for v in methods[name] if np.isfinite(v)]) * scale for name in names]
        positions = np.arange(1, len(names) + 1)
        ax.boxplot(finite, positions=positions, widths=0.5, showfliers=False, medianprops={"color": "k"})
        for index, (position, points) in enumerate(zip(positions, finite, strict=True)):
            offsets = rng.uniform(-JITTER, JITTER, size=len(points))
            ax.scatter(position + offsets, points, s=6, color=f"C{index % 10}", alpha=0.7, linewidths=0)
        dropped = sum(len(methods[name]) for name in names) - sum(len(points) for points in finite)
        ax.set_xticks(positions, names, rotation=30, ha="right", fontsize=8)
        ax.set_title(f"noise {noise}" + (f" ({dropped} non-finite left out)" if dropped else ""), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(label)
    return figure


def compare_figure(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    out_path: str | Path,
    metric: str = "dice",
    *,
    dpi: int = DPI,
    overwrite: bool = False,
) -> Path:
    """Draw :func:`draw_compare` and save it (PNG/PDF/SVG by extension); return ``out_path``."""
    return save_figure(draw_compare(values, metric), out_path, dpi, overwrite=overwrite)
