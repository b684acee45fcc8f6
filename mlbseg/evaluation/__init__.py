"""Evaluation at the original geometry (docs/evaluation.md §1) and mask export in a volume's own header.

- :mod:`~mlbseg.evaluation.resample`: slice-grid probabilities back to the original in-plane size.
- :mod:`~mlbseg.evaluation.metrics`: labels from probabilities, per-volume Dice and HD95 (mm) per class,
  and their summary over cases.
- :mod:`~mlbseg.evaluation.export`: write a mask with a reference volume's geometry (volumes are read by
  :mod:`mlbseg.prep.volumes`).
"""

from __future__ import annotations

from mlbseg.evaluation.export import write_mask_like
from mlbseg.evaluation.metrics import (
    evaluate_volume,
    labels_from_probabilities,
    summarize,
    volume_dice,
    volume_hd95,
    volume_labels,
)
from mlbseg.evaluation.resample import probabilities_to_original

__all__ = [
    "evaluate_volume",
    "labels_from_probabilities",
    "probabilities_to_original",
    "summarize",
    "volume_dice",
    "volume_hd95",
    "volume_labels",
    "write_mask_like",
]
