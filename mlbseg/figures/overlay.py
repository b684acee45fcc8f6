"""Figure-5-style overlays: grey MR slices with contours of the reference, the noisy label and a prediction.

Colours follow the paper's Figure 5 (reference red, noisy label yellow) plus cyan for a model's prediction.
With more than one foreground class (K > 2 labels, ``class_names``) the colour names the class instead
(:data:`CLASS_COLORS`, a legend entry per label name) and the line style the layer (reference solid, noisy
label dashed, prediction dotted). Masks are drawn as contours (marching squares at level 0.5,
``skimage.measure.find_contours``, of each class's mask), never as filled areas, so the anatomy stays
visible. Row 0 of an array is the top of its panel (``origin="upper"``), as in the (z, y, x) arrays of
mlbseg and in radiological viewers of SimpleITK-read volumes.
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
from mlbseg.figures import DPI, new_figure, save_figure

REFERENCE_COLOR = "#ff0000"
NOISY_COLOR = "#ffff00"
PREDICTION_COLOR = "#00ffff"
LAYER_COLORS = {"Reference": REFERENCE_COLOR, "Noisy label": NOISY_COLOR, "Prediction": PREDICTION_COLOR}
# Nested widths (points): where masks coincide, the thinner contour drawn later leaves the wider one visible.
LINE_WIDTHS = {"Reference": 2.5, "Noisy label": 1.5, "Prediction": 0.8}
LEGEND_INCHES = 0.8  # room below and above the panels for the legend and two-line titles
# K > 2 labels: a colour per foreground class (label k: entry k - 1, cycling), a line style per layer.
CLASS_COLORS = ("#ff0000", "#00ffff", "#ffff00", "#00ff00", "#ff00ff", "#ff8000", "#4080ff", "#ffffff")
LINE_STYLES = {"Reference": "solid", "Noisy label": (0, (4, 2)), "Prediction": (0, (1, 1))}
LAYER_KEY_COLOR = "#808080"  # the layer entries of a per-class legend


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


def _draw_panel(
    ax: Axes, image: np.ndarray, contours: list[tuple[str, np.ndarray, str, object]], title: str
) -> None:
    """One slice: ``contours`` are (layer label, binary [H, W] mask, colour, line style)."""
    low, high = np.percentile(image, (1, 99))
    ax.imshow(image, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), origin="upper")
    for label, mask, color, style in contours:
        segments = _contour_segments(mask)
        ax.add_collection(
            LineCollection(
                segments, colors=color, linewidths=LINE_WIDTHS[label], linestyles=style, label=label
            )
        )
    height, width = image.shape
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)  # row 0 at the top
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)


def _slice_dice(prediction: np.ndarray, reference: np.ndarray, values: Sequence[int]) -> float:
    """2-D Dice of one slice [H, W]: of the foreground (binary), else the mean over the classes ``values``."""
    if len(values) == 1:
        return volume_dice(prediction[None], reference[None])
    return float(np.mean([volume_dice(prediction[None] == k, reference[None] == k) for k in values]))


def _contours(
    layers: list[tuple[str, np.ndarray]], k: int, values: Sequence[int]
) -> list[tuple[str, np.ndarray, str, object]]:
    """Contours of slice ``k``: per layer its colour (binary), or per layer and class the class colour."""
    if len(values) == 1:
        return [(label, mask[k], LAYER_COLORS[label], "solid") for label, mask in layers]
    return [
        (label, mask[k] == value, CLASS_COLORS[(value - 1) % len(CLASS_COLORS)], LINE_STYLES[label])
        for label, mask in layers
        for value in values
    ]


def _legend_handles(
    layers: list[tuple[str, np.ndarray]], class_names: Sequence[str], values: Sequence[int]
) -> list[Line2D]:
    """Binary: one entry per layer in its colour. K > 2: one per class (its colour), one per layer (style)."""
    if len(values) == 1:
        return [
            Line2D([], [], color=LAYER_COLORS[label], linewidth=LINE_WIDTHS[label], label=label)
            for label, _ in layers
        ]
    classes = [
        Line2D([], [], color=CLASS_COLORS[(value - 1) % len(CLASS_COLORS)], linewidth=2.0, label=name)
        for name, value in zip(class_names, values, strict=True)
    ]
    styles = [
        Line2D([], [], color=LAYER_KEY_COLOR, linewidth=1.5, linestyle=LINE_STYLES[label], label=label)
        for label, _ in layers
    ]
    return classes + styles


def draw_overlay(
    image: np.ndarray,
    reference: np.ndarray,
    noisy: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    *,
    slices: Sequence[int] | None = None,
    titles: Sequence[str] | None = None,
    panel_size: float = 3.0,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """Draw one panel per chosen slice: grey image, reference (red), noisy (yellow), prediction (cyan).

    Args:
        image: Intensities [S, H, W] or one slice [H, W], any real range (each panel is windowed to its
            1st-99th percentile).
        reference: Reference label values, same shape as ``image`` (binary: 0/1, nonzero = foreground).
        noisy: Noisy label values, same shape, or None to leave it out of the panels and the legend.
        prediction: Predicted label values (from probabilities first), same shape, or None likewise. When
            given, each title ends with the slice's 2-D Dice against the reference (K > 2 labels: the mean
            over the foreground classes).
        slices: Slice indices to show; default :func:`default_slices` of the reference.
        titles: One title per shown slice; default ``"slice k"``.
        panel_size: Panel width in inches; the figure is ``panel_size × n_slices`` wide and
            ``panel_size × H / W + LEGEND_INCHES`` tall.
        class_names: Names of the foreground labels 1..K-1. With two or more, each class gets its colour
            (:data:`CLASS_COLORS`) and a legend entry, and each layer its line style
            (:data:`LINE_STYLES`); None or one name: the binary drawing, one colour per layer.

    Returns:
        The figure (constrained layout, Agg canvas), not yet saved.
    """
    image = _as_stack(image, "image")
    reference, noisy, prediction = (
        _as_stack(mask, name, image.shape)
        for mask, name in ((reference, "reference"), (noisy, "noisy"), (prediction, "prediction"))
    )
    shown = _slices_and_titles(reference > 0, slices, titles)
    layers = [
        (label, mask)
        for label, mask in (("Reference", reference), ("Noisy label", noisy), ("Prediction", prediction))
        if mask is not None
    ]
    names = list(class_names or [])
    values = list(range(1, len(names) + 1)) if len(names) > 1 else [1]
    height, width = image.shape[1:]
    figure = new_figure(panel_size * len(shown), panel_size * height / width + LEGEND_INCHES)
    for ax, (k, title) in zip(figure.subplots(1, len(shown), squeeze=False)[0], shown, strict=True):
        if prediction is not None:
            title = f"{title}\nDice {_slice_dice(prediction[k], reference[k], values):.3f}"
        _draw_panel(ax, image[k], _contours(layers, k, values), title)
    handles = _legend_handles(layers, names, values)
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=9)
    return figure


def draw_method_overlays(
    image: np.ndarray,
    reference: np.ndarray,
    predictions: dict[str, np.ndarray],
    *,
    slices: Sequence[int] | None = None,
    panel_size: float = 2.4,
    class_names: Sequence[str] | None = None,
) -> Figure:
    """One row per method, one column per slice: the reference and that method's prediction.

    The same slices in every row, so methods compare at a glance; each row starts with the method's name
    and each panel's title gives the slice and its 2-D Dice against the reference (K > 2 labels: the mean
    over the foreground classes).

    Args:
        image: Intensities [S, H, W] on the grid of the masks (e.g. the original grid).
        reference: Reference label values [S, H, W].
        predictions: ``{method name: predicted label values [S, H, W]}``, drawn top to bottom.
        slices: Slice indices; default :func:`default_slices` of the reference.
        panel_size: Panel width in inches.
        class_names: As :func:`draw_overlay`.
    """
    if not predictions:
        raise ValueError("draw_method_overlays needs at least one method's prediction")
    image = _as_stack(image, "image")
    reference = _as_stack(reference, "reference", image.shape)
    masks = {
        name: _as_stack(mask, f"prediction of {name}", image.shape) for name, mask in predictions.items()
    }
    shown = _slices_and_titles(reference > 0, slices, None)
    names = list(class_names or [])
    values = list(range(1, len(names) + 1)) if len(names) > 1 else [1]
    height, width = image.shape[1:]
    figure = new_figure(panel_size * len(shown), panel_size * height / width * len(masks) + LEGEND_INCHES)
    grid = figure.subplots(len(masks), len(shown), squeeze=False)
    for row, (method, prediction) in zip(grid, masks.items(), strict=True):
        layers = [("Reference", reference), ("Prediction", prediction)]
        for column, (ax, (k, title)) in enumerate(zip(row, shown, strict=True)):
            dice = _slice_dice(prediction[k], reference[k], values)
            _draw_panel(ax, image[k], _contours(layers, k, values), f"{title}, Dice {dice:.3f}")
            if column == 0:  # the method's name left of its row (axis labels are off)
                ax.text(-0.06, 0.5, method, transform=ax.transAxes, rotation=90, ha="right", va="center")
    handles = _legend_handles([("Reference", reference), ("Prediction", reference)], names, values)
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
    class_names: Sequence[str] | None = None,
) -> Path:
    """Draw :func:`draw_overlay` and save it (PNG/PDF/SVG by extension); return ``out_path``."""
    figure = draw_overlay(
        image,
        reference,
        noisy,
        prediction,
        slices=slices,
        titles=titles,
        panel_size=panel_size,
        class_names=class_names,
    )
    return save_figure(figure, out_path, dpi, overwrite=overwrite)
