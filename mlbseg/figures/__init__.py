"""Publication figures as PNG: Figure-5 overlays, α/β weight maps, training curves.

One module per figure (:mod:`~mlbseg.figures.overlay`, :mod:`~mlbseg.figures.weights`,
:mod:`~mlbseg.figures.curves`). Each has a ``draw_*`` function that returns a
:class:`matplotlib.figure.Figure` (e.g. for TensorBoard's ``add_figure``) and a ``*_figure`` function that
draws and saves it. Figures are built on ``Figure`` + ``FigureCanvasAgg`` directly, never through pyplot,
so no global state or GUI backend is involved. This package module holds the shared plumbing: a figure of a
fixed size in inches with constrained layout, and an atomic PNG save (pixel size = inches × dpi, exactly).
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mlbseg.engine.atomic import atomic_file
from mlbseg.errors import UserError

DPI = 300


def new_figure(width_in: float, height_in: float) -> Figure:
    """A blank figure of ``width_in`` × ``height_in`` inches with constrained layout and an Agg canvas."""
    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, out_path: str | Path, dpi: int = DPI, *, overwrite: bool = False) -> Path:
    """Write ``figure`` as a PNG of exactly ``figsize × dpi`` pixels, atomically (temporary file + rename).

    Raises:
        UserError: ``out_path`` exists and ``overwrite`` is false.
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise UserError(f"{out_path}: already exists; pass --overwrite to replace it")
    with atomic_file(out_path) as stream:
        figure.savefig(stream, format="png", dpi=dpi)
    return out_path
