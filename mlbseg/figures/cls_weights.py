"""The paper's Figure 4 for classification: α and β of logged training samples, grouped by pseudo-label.

A classification run with ``train.log_weights_for > 0`` writes ``RUN_DIR/weights/epoch_XXX.npz`` after every
meta-weighted epoch (:class:`mlbseg.cls.step.WeightLog`): per tracked sample its ``index``, ``noisy_label``,
``clean_label``, ``pseudo_label``, ``alpha`` and ``beta`` as last seen in that epoch. The figure has three
panels: a grouped bar chart of α (noisy label) and β (pseudo-label) per sample where the pseudo-label is right
and the noisy label wrong (pseudo = clean ≠ noisy), the same for samples whose pseudo-label equals the noisy
one, and the mean α and β of every group over all logged samples of the epoch (with the group sizes).

Images are not shown (the paper's thumbnails would need the dataset); the x labels name the sample
(``#index``) and its ``noisy→pseudo`` classes instead. Which samples are shown is deterministic: the first
``count`` of each group in index order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from mlbseg.errors import UserError
from mlbseg.figures import DPI, new_figure, save_figure

KEYS = ("index", "noisy_label", "clean_label", "pseudo_label", "alpha", "beta")
ALPHA_COLOR = "#1f77b4"  # blue: weight of the noisy-label loss
BETA_COLOR = "#ff7f0e"  # orange: weight of the pseudo-label loss
GROUPS = (
    ("corrected", "pseudo = clean ≠ noisy"),
    ("agree", "pseudo = noisy"),
    ("other", "pseudo ≠ noisy, ≠ clean"),
)
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.npz")


def available_epochs(run_dir: str | Path) -> list[int]:
    """Epoch numbers (1-based, as in the file names) of ``RUN_DIR/weights/epoch_XXX.npz``, sorted."""
    folder = Path(run_dir) / "weights"
    if not folder.is_dir():
        return []
    matches = (_EPOCH_FILE.fullmatch(path.name) for path in folder.iterdir())
    return sorted(int(match.group(1)) for match in matches if match)


def load_weight_log(run_dir: str | Path, epoch: int | str = "last") -> tuple[int, dict[str, np.ndarray]]:
    """Read one epoch's weight log of a classification run.

    Args:
        run_dir: A run folder written by ``mlbseg classify train``.
        epoch: An epoch number as in ``weights/epoch_XXX.npz`` (1-based), or ``"last"``.

    Returns:
        ``(epoch, log)``: the epoch read and ``{key: [T] array}`` for every key of :data:`KEYS` (``index`` and
        the labels int64, ``alpha``/``beta`` float64; pseudo-label −1 and NaN weights for samples not seen,
        NaN β for l2rw, clean label −1 where unknown).

    Raises:
        UserError: The run folder, its ``weights`` folder or the epoch's file is missing (naming the path and
            the epochs that exist), or the file lacks a key or its arrays differ in length.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    epochs = available_epochs(run_dir)
    if not epochs:
        raise UserError(
            f"{run_dir / 'weights'}: no epoch_XXX.npz weight logs; they are written by l2rw/l2b runs "
            "with train.log_weights_for > 0, for epochs after the warm-up"
        )
    if epoch == "last":
        chosen = epochs[-1]
    else:
        try:
            chosen = int(epoch)
        except ValueError:
            raise UserError(f"--epoch: expected an epoch number or 'last', got '{epoch}'") from None
    path = run_dir / "weights" / f"epoch_{chosen:03d}.npz"
    if chosen not in epochs:
        raise UserError(f"{path}: not found; available epochs: {', '.join(map(str, epochs))}")
    with np.load(path) as data:
        missing = [key for key in KEYS if key not in data.files]
        if missing:
            raise UserError(f"{path}: lacks {missing}; a weight log has {list(KEYS)}")
        log = {key: np.asarray(data[key]) for key in KEYS}
    if len({array.shape for array in log.values()}) != 1 or log["index"].ndim != 1:
        shapes = {key: array.shape for key, array in log.items()}
        raise UserError(f"{path}: arrays must all be [T] of one length, got {shapes}")
    for key in KEYS[:4]:
        log[key] = log[key].astype(np.int64)
    for key in KEYS[4:]:
        log[key] = log[key].astype(np.float64)
    return chosen, log


def group_masks(log: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Boolean [T] masks of the groups in :data:`GROUPS`, over samples seen in the epoch (finite α).

    ``corrected``: pseudo = clean ≠ noisy (clean known); ``agree``: pseudo = noisy; ``other``: the rest of the
    seen samples (pseudo-label differs from the noisy one and is wrong, or the clean label is unknown).
    """
    noisy, clean, pseudo = (np.asarray(log[key]) for key in ("noisy_label", "clean_label", "pseudo_label"))
    seen = (pseudo >= 0) & np.isfinite(np.asarray(log["alpha"], dtype=np.float64))
    corrected = seen & (clean >= 0) & (pseudo == clean) & (pseudo != noisy)
    agree = seen & (pseudo == noisy)
    return {"corrected": corrected, "agree": agree, "other": seen & ~corrected & ~agree}


def _mean(values: np.ndarray) -> float:
    """Mean of the finite entries of ``values`` [n]; NaN if there are none (empty group, l2rw's β)."""
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _bars(ax: Axes, xs: np.ndarray, alpha: np.ndarray, beta: np.ndarray, *, width: float = 0.38) -> None:
    ax.bar(xs - width / 2, alpha, width, color=ALPHA_COLOR, label="α (noisy label)")
    ax.bar(xs + width / 2, beta, width, color=BETA_COLOR, label="β (pseudo-label)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))  # weights are ~1e-4 after normalisation
    ax.grid(axis="y", alpha=0.3)


def _sample_panel(
    ax: Axes, log: Mapping[str, np.ndarray], mask: np.ndarray, title: str, *, count: int, epoch: int | None
) -> None:
    picked = np.flatnonzero(mask)
    picked = picked[np.argsort(log["index"][picked], kind="stable")][:count]
    if not len(picked):
        where = f" in epoch {epoch}" if epoch is not None else ""
        ax.set_title(f"{title}: no samples{where}", fontsize=9)
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set_xticks([])
        return
    xs = np.arange(len(picked), dtype=np.float64)
    _bars(ax, xs, log["alpha"][picked], log["beta"][picked])
    labels = [
        f"#{log['index'][i]}\n{log['noisy_label'][i]}→{log['pseudo_label'][i]}" for i in picked.tolist()
    ]
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_xlim(-0.6, len(picked) - 0.4)
    ax.set_title(f"{title} ({len(picked)} of {int(mask.sum())})", fontsize=9)
    ax.set_xlabel("sample, noisy→pseudo class", fontsize=8)


def draw_cls_weights(
    log: Mapping[str, np.ndarray],
    *,
    count: int = 8,
    epoch: int | None = None,
    bar_width_in: float = 0.5,
    height_in: float = 3.2,
) -> Figure:
    """Draw Figure 4 for classification: α and β per sample in two groups, and the group means.

    Args:
        log: A weight log as returned by :func:`load_weight_log`: [T] arrays under every key of :data:`KEYS`.
        count: Samples shown per group (the first ``count`` in index order).
        epoch: The epoch, for the titles; None leaves it out.
        bar_width_in: Inches per sample in the two bar panels (each at least 2.5 in wide); the distribution
            panel is 2.8 in wide and the figure ``height_in`` tall.
        height_in: Figure height in inches.

    Returns:
        The figure (constrained layout, Agg canvas), not yet saved. Its axes are, in order: the
        ``pseudo = clean ≠ noisy`` samples, the ``pseudo = noisy`` samples, the group means.

    Raises:
        ValueError: ``count`` < 1, or ``log`` lacks a key of :data:`KEYS`.
    """
    if count < 1:
        raise ValueError(f"count must be ≥ 1, got {count}")
    missing = [key for key in KEYS if key not in log]
    if missing:
        raise ValueError(f"weight log lacks {missing}; it needs {list(KEYS)}")
    log = {key: np.asarray(log[key]) for key in KEYS}
    masks = group_masks(log)
    panel_width = max(2.5, bar_width_in * count + 0.6)
    figure = new_figure(2 * panel_width + 2.8, height_in)
    axes = figure.subplots(1, 3, width_ratios=[panel_width, panel_width, 2.8])
    for ax, (key, title) in zip(axes[:2], GROUPS[:2], strict=True):
        _sample_panel(ax, log, masks[key], title, count=count, epoch=epoch)
    axes[0].set_ylabel("weight")

    sizes = [int(masks[key].sum()) for key, _ in GROUPS]
    means = {
        name: np.array([_mean(log[name][masks[key]]) for key, _ in GROUPS]) for name in ("alpha", "beta")
    }
    xs = np.arange(len(GROUPS), dtype=np.float64)
    _bars(axes[2], xs, means["alpha"], means["beta"])
    axes[2].set_xticks(
        xs, [f"{title}\nn={size}" for (_, title), size in zip(GROUPS, sizes, strict=True)], fontsize=6
    )
    axes[2].set_title("mean over logged samples", fontsize=9)
    handles, labels = axes[2].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper right", ncols=2, frameon=False, fontsize=8)
    suffix = "" if not np.all(np.isnan(log["beta"])) else " (β not logged: l2rw run)"
    figure.suptitle(
        (f"Epoch {epoch}: " if epoch is not None else "")
        + f"α and β of {len(log['index'])} logged samples"
        + suffix,
        fontsize=10,
    )
    return figure


def cls_weights_figure(
    log: Mapping[str, np.ndarray],
    out_path: str | Path,
    *,
    count: int = 8,
    epoch: int | None = None,
    dpi: int = DPI,
    overwrite: bool = False,
) -> Path:
    """Draw :func:`draw_cls_weights` and save it (PNG/PDF/SVG by extension); return ``out_path``."""
    figure = draw_cls_weights(log, count=count, epoch=epoch)
    return save_figure(figure, out_path, dpi, overwrite=overwrite)
