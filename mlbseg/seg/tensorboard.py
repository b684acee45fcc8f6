"""The overlays a segmentation run shows in TensorBoard every ``train.figures_every`` epochs.

A fixed set of slices (apex, mid-gland and base of the first validation case: the ``val`` split's, else the
first meta case's) with the reference and the current prediction at original resolution, predicted and
turned into labels exactly as ``evaluate`` does. The model runs in eval mode (no BatchNorm statistics
change) and nothing random is drawn, so a run with figures trains exactly as one without.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

from mlbseg.figures.overlay import default_slices, draw_overlay
from mlbseg.seg.data import Volume
from mlbseg.seg.inference import image_at_original_resolution, labels_at_original_resolution


def overlay_of_volume(
    model: torch.nn.Module,
    volume: Volume,
    class_names: Sequence[str],
    *,
    amp_dtype: torch.dtype | None = None,
) -> Figure:
    """Reference and prediction of ``volume`` at original resolution on its apex/mid/base slices.

    Args:
        model: The network (any mode; restored after).
        volume: A case with a reference (val or meta).
        class_names: The foreground labels' names (one for binary data).
        amp_dtype: The run's autocast dtype for the forward, or None.
    """
    prediction = labels_at_original_resolution(model, volume, amp_dtype)
    image = image_at_original_resolution(volume)
    slices = default_slices(volume.mask_original > 0)
    titles = [f"{volume.case_id} slice {k}" for k in slices]
    names = list(class_names) if len(class_names) > 1 else None
    return draw_overlay(
        image, volume.mask_original, prediction=prediction, slices=slices, titles=titles, class_names=names
    )
