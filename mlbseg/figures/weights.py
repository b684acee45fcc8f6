"""Meta-learned weight maps: per training slice, its inputs next to the α (noisy) and β (pseudo-label) maps.

Each row shows one slice: image, noisy label, pseudo-label, reference, α map, β map. α and β of a row share
one colour scale from 0 to the larger of their maxima, with one colour bar, so the two maps can be compared
pixel by pixel (after ``org`` normalisation the weights of a batch sum to 1, so values are tiny and the bar
shows a common exponent).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mlbseg.figures import DPI, new_figure, save_figure

PANELS = (
    ("image", "Image"),
    ("noisy", "Noisy label"),
    ("pseudo", "Pseudo-label"),
    ("reference", "Reference"),
    ("alpha", "α (noisy label)"),
    ("beta", "β (pseudo-label)"),
)
WEIGHT_CMAP = "viridis"
WEIGHT_LABEL = "meta weight α, β (unitless)"


def _check_row(index: int, row: Mapping[str, object]) -> tuple[int, int]:
    missing = [key for key, _ in PANELS if key not in row]
    if missing:
        raise ValueError(
            f"weight-map row {index} lacks {missing}; each row needs {[key for key, _ in PANELS]}"
        )
    shapes = {key: np.shape(row[key]) for key, _ in PANELS}
    if len(set(shapes.values())) != 1 or len(shapes["image"]) != 2:
        raise ValueError(f"weight-map row {index}: all maps must be [H, W] of one shape, got {shapes}")
    return shapes["image"]


def _draw_row(figure: Figure, axes: Sequence[Axes], maps: Mapping[str, np.ndarray]) -> None:
    """Fill one row of six axes (order of ``PANELS``) and add the row's shared α/β colour bar."""
    low, high = np.percentile(maps["image"], (1, 99))
    axes[0].imshow(maps["image"], cmap="gray", vmin=low, vmax=max(high, low + 1e-6))
    for ax, key in zip(axes[1:4], ("noisy", "pseudo", "reference"), strict=True):
        ax.imshow(maps[key], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    top = max(maps["alpha"].max(), maps["beta"].max())
    vmax = top if top > 0 else 1.0  # all-zero weights (no positive meta score) still get a valid scale
    weight_images = [
        ax.imshow(maps[key], vmin=0.0, vmax=vmax, cmap=WEIGHT_CMAP, interpolation="nearest")
        for key, ax in (("alpha", axes[4]), ("beta", axes[5]))
    ]
    bar = figure.colorbar(weight_images[-1], ax=list(axes[4:]), shrink=0.9)
    bar.set_label(WEIGHT_LABEL, fontsize=7)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])


def draw_weight_maps(rows: Sequence[Mapping[str, object]], *, panel_size: float = 1.6) -> Figure:
    """Draw one row of six panels per training slice.

    Args:
        rows: One mapping per slice with [H, W] arrays (numpy, or CPU tensors) under ``image`` (any real
            intensities, shown grey, windowed to the 1st-99th percentile), ``noisy``, ``pseudo``,
            ``reference`` (binary 0/1 masks, shown black/white) and ``alpha``, ``beta`` (non-negative
            weights). An optional ``title`` string labels the row (e.g. case, slice and epoch).
        panel_size: Panel width in inches; the figure is ``6 × panel_size`` (+ 0.6 for the colour bars)
            wide and ``len(rows) × panel_size × H / W`` (+ 0.3 for the column titles) tall.

    Returns:
        The figure (constrained layout, Agg canvas), not yet saved.
    """
    if not rows:
        raise ValueError("weight_map_figure needs at least one row")
    height, width = _check_row(0, rows[0])
    for index, row in enumerate(rows[1:], start=1):
        if _check_row(index, row) != (height, width):
            raise ValueError(f"weight-map row {index} is not {height}×{width} like row 0")
    figure = new_figure(len(PANELS) * panel_size + 0.6, len(rows) * panel_size * height / width + 0.3)
    grid = figure.subplots(len(rows), len(PANELS), squeeze=False)
    for axes, row in zip(grid, rows, strict=True):
        _draw_row(figure, axes, {key: np.asarray(row[key], dtype=np.float64) for key, _ in PANELS})
        if "title" in row:
            axes[0].set_ylabel(str(row["title"]), fontsize=8)
    for ax, (_, column_title) in zip(grid[0], PANELS, strict=True):
        ax.set_title(column_title, fontsize=9)
    return figure


def weight_map_figure(
    rows: Sequence[Mapping[str, object]],
    out_path: str | Path,
    *,
    panel_size: float = 1.6,
    dpi: int = DPI,
    overwrite: bool = False,
) -> Path:
    """Draw :func:`draw_weight_maps` and save it (PNG/PDF/SVG by extension); return ``out_path``."""
    return save_figure(draw_weight_maps(rows, panel_size=panel_size), out_path, dpi, overwrite=overwrite)
