"""Publication figures as PNG, PDF or SVG: Figure-5 overlays, α/β weight maps, training curves, comparisons.

One module per figure (:mod:`~mlbseg.figures.overlay`, :mod:`~mlbseg.figures.weights`,
:mod:`~mlbseg.figures.curves`). Each has a ``draw_*`` function that returns a
:class:`matplotlib.figure.Figure` (e.g. for TensorBoard's ``add_figure``) and a ``*_figure`` function that
draws and saves it. Figures are built on ``Figure`` + ``FigureCanvasAgg`` directly, never through pyplot,
so no global state or GUI backend is involved. This package module holds the shared plumbing: a figure of a
fixed size in inches with constrained layout, and an atomic save whose format follows the file's extension
(:data:`FORMATS`): PNG of exactly inches × dpi pixels, or vector PDF/SVG (images inside at ``dpi``), written
without a creation date so the same figure gives the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mlbseg.engine.atomic import atomic_file
from mlbseg.errors import UserError

DPI = 300
FORMATS = {".png": "png", ".pdf": "pdf", ".svg": "svg"}  # extension -> matplotlib format
_NO_DATE = {"pdf": {"CreationDate": None}, "svg": {"Date": None}, "png": {}}


def new_figure(width_in: float, height_in: float) -> Figure:
    """A blank figure of ``width_in`` × ``height_in`` inches with constrained layout and an Agg canvas."""
    figure = Figure(figsize=(width_in, height_in), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def check_figure_path(out_path: str | Path, *, overwrite: bool = False) -> Path:
    """``out_path`` if a figure may be written there: a known extension, and no file unless ``overwrite``.

    Raises:
        UserError: Another extension (the message lists :data:`FORMATS`), or an existing file.

    Example:
        >>> check_figure_path("figures/curves.pdf")
        PosixPath('figures/curves.pdf')
    """
    out_path = Path(out_path)
    if out_path.suffix.lower() not in FORMATS:
        raise UserError(
            f"{out_path}: a figure is written as {', '.join(FORMATS)}; choose one of these extensions"
        )
    if out_path.exists() and not overwrite:
        raise UserError(f"{out_path}: already exists; pass --overwrite to replace it")
    return out_path


def save_figure(figure: Figure, out_path: str | Path, dpi: int = DPI, *, overwrite: bool = False) -> Path:
    """Write ``figure`` in the format of ``out_path``'s extension, atomically (temporary file + rename).

    PNG: exactly ``figsize × dpi`` pixels. PDF and SVG: vector, raster parts at ``dpi``.

    Raises:
        UserError: An unknown extension, or ``out_path`` exists and ``overwrite`` is false.
    """
    out_path = check_figure_path(out_path, overwrite=overwrite)
    kind = FORMATS[out_path.suffix.lower()]
    # A fixed salt for the SVG's element ids (random otherwise): the same figure gives the same bytes.
    with atomic_file(out_path) as stream, matplotlib.rc_context({"svg.hashsalt": "mlbseg"}):
        figure.savefig(stream, format=kind, dpi=dpi, metadata=_NO_DATE[kind])
    return out_path
