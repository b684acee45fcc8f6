"""Figure-5-style overlays: grey MR slices with contours of the reference, the noisy label and a prediction.

Colours follow the paper's Figure 5 (reference red, noisy label yellow) plus cyan for a model's prediction.
Masks are drawn as contours (marching squares at level 0.5, ``skimage.measure.find_contours``), never as
filled areas, so the anatomy stays visible. Row 0 of an array is the top of its panel (``origin="upper"``),
as in the (z, y, x) arrays of mlbseg and in radiological viewers of SimpleITK-read volumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from skimage.measure import find_contours

from mlbseg.evaluation.metrics import volume_dice
from mlbseg.figures import DPI, new_figure, save_png

REFERENCE_COLOR = "#ff0000"
NOISY_COLOR = "#ffff00"
PREDICTION_COLOR = "#00ffff"
# Nested widths (points): where masks coincide, the thinner contour drawn later leaves the wider one visible.
LINE_WIDTHS = {"Reference": 2.5, "Noisy label": 1.5, "Prediction": 0.8}
LEGEND_INCHES = 0.8  # room below and above the panels for the legend and two-line titles


def default_slices(reference: np.ndarray, count: int = 3) -> list[int]:
    """Slice indices spread over the reference's z-extent: apex, mid-gland and base for ``count=3``.

    The indices are the centres of ``count`` equal parts of [first, last] slice holding foreground
    (duplicates removed, so a thin gland gives fewer); the middle slice when the reference is empty.

    Args:
        reference: Binary mask [S, H, W].
        count: How many slices to pick at most.

    Example:
        >>> import numpy as np
        >>> mask = np.zeros((20, 4, 4), np.uint8); mask[4:17, 1:3, 1:3] = 1
        >>> default_slices(mask)
        [6, 10, 14]
    """
    occupied = np.flatnonzero(reference.reshape(len(reference), -1).any(axis=1))
    if occupied.size == 0:
        return [len(reference) // 2]
    first, last = int(occupied[0]), int(occupied[-1])
    centres = first + (last - first) * (2 * np.arange(count) + 1) / (2 * count)
    return sorted({int(k) for k in np.floor(centres + 0.5)})  # round half up, not to even


def _as_stack(array: np.ndarray | None, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    if array is None:
        return None
    stack = np.asarray(array)
    stack = stack[None] if stack.ndim == 2 else stack
    if stack.ndim != 3 or (shape is not None and stack.shape != shape):
        raise ValueError(f"{name} must be [S, H, W] or [H, W] like the image {shape}, got {np.shape(array)}")
    return stack


def _contour_segments(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours of a binary [H, W] mask as (x, y) = (column, row) polylines in pixel-centre units."""
    padded = np.pad(mask.astype(np.float32), 1)  # zero border: contours touching the edge close along it
    return [contour[:, ::-1] - 1.0 for contour in find_contours(padded, 0.5)]  # (row, col) -> (x, y)


def _slices_and_titles(
    reference: np.ndarray, slices: Sequence[int] | None, titles: Sequence[str] | None
) -> list[tuple[int, str]]:
    """Validated (slice index, title) pairs; defaults: :func:`default_slices` and ``"slice k"``."""
    shown = default_slices(reference) if slices is None else [int(k) for k in slices]
    if not shown or not all(0 <= k < len(reference) for k in shown):
        raise ValueError(
            f"slices must be a non-empty list of indices in [0, {len(reference)}), got {slices!r}"
        )
    names = [f"slice {k}" for k in shown] if titles is None else [str(title) for title in titles]
    if len(names) != len(shown):
        raise ValueError(f"got {len(names)} titles for {len(shown)} slices")
    return list(zip(shown, names, strict=True))


def _draw_panel(ax: Axes, image: np.ndarray, layers: list[tuple[str, np.ndarray, str]], title: str) -> None:
    low, high = np.percentile(image, (1, 99))
    ax.imshow(image, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), origin="upper")
    for label, mask, color in layers:
        ax.add_collection(
            LineCollection(_contour_segments(mask), colors=color, linewidths=LINE_WIDTHS[label], label=label)
        )
    height, width = image.shape
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)  # row 0 at the top
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)


def draw_overlay(
    image: np.ndarray,
    reference: np.ndarray,
    noisy: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    *,
    slices: Sequence[int] | None = None,
    titles: Sequence[str] | None = None,
    panel_size: float = 3.0,
) -> Figure:
    """Draw one panel per chosen slice: grey image, reference (red), noisy (yellow), prediction (cyan).

    Args:
        image: Intensities [S, H, W] or one slice [H, W], any real range (each panel is windowed to its
            1st-99th percentile).
        reference: Binary reference mask, same shape as ``image``.
        noisy: Binary noisy label, same shape, or None to leave it out of the panels and the legend.
        prediction: Binary prediction (threshold probabilities first), same shape, or None likewise. When
            given, each title ends with the slice's 2-D Dice against the reference.
        slices: Slice indices to show; default :func:`default_slices` of the reference.
        titles: One title per shown slice; default ``"slice k"``.
        panel_size: Panel width in inches; the figure is ``panel_size × n_slices`` wide and
            ``panel_size × H / W + LEGEND_INCHES`` tall.

    Returns:
        The figure (constrained layout, Agg canvas), not yet saved.
    """
    image = _as_stack(image, "image")
    reference, noisy, prediction = (
        _as_stack(mask, name, image.shape)
        for mask, name in ((reference, "reference"), (noisy, "noisy"), (prediction, "prediction"))
    )
    shown = _slices_and_titles(reference, slices, titles)
    layers = [
        (label, mask, color)
        for label, mask, color in (
            ("Reference", reference, REFERENCE_COLOR),
            ("Noisy label", noisy, NOISY_COLOR),
            ("Prediction", prediction, PREDICTION_COLOR),
        )
        if mask is not None
    ]
    height, width = image.shape[1:]
    figure = new_figure(panel_size * len(shown), panel_size * height / width + LEGEND_INCHES)
    for ax, (k, title) in zip(figure.subplots(1, len(shown), squeeze=False)[0], shown, strict=True):
        if prediction is not None:
            title = f"{title}\nDice {volume_dice(prediction[k : k + 1], reference[k : k + 1]):.3f}"
        _draw_panel(ax, image[k], [(label, mask[k], color) for label, mask, color in layers], title)
    handles = [
        Line2D([], [], color=color, linewidth=LINE_WIDTHS[label], label=label) for label, _, color in layers
    ]
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=9)
    return figure


def overlay_figure(
    image: np.ndarray,
    reference: np.ndarray,
    noisy: np.ndarray | None,
    prediction: np.ndarray | None,
    *,
    out_path: str | Path,
    slices: Sequence[int] | None = None,
    titles: Sequence[str] | None = None,
    panel_size: float = 3.0,
    dpi: int = DPI,
    overwrite: bool = False,
) -> Path:
    """Draw :func:`draw_overlay` and save it as a PNG (``dpi`` pixels per inch); return ``out_path``."""
    figure = draw_overlay(
        image, reference, noisy, prediction, slices=slices, titles=titles, panel_size=panel_size
    )
    return save_png(figure, out_path, dpi, overwrite=overwrite)
