"""Evaluation at the original geometry (docs/evaluation.md §1) and mask export in a volume's own header.

- :mod:`~mlbseg.evaluation.resample`: slice-grid probabilities back to the original in-plane size.
- :mod:`~mlbseg.evaluation.metrics`: per-volume Dice and HD95 (mm), and their summary over cases.
- :mod:`~mlbseg.evaluation.export`: write a mask with a reference volume's geometry (volumes are read by
  :mod:`mlbseg.prep.volumes`).
"""

from __future__ import annotations

from mlbseg.evaluation.export import write_mask_like
from mlbseg.evaluation.metrics import evaluate_volume, summarize, volume_dice, volume_hd95
from mlbseg.evaluation.resample import probabilities_to_original

__all__ = [
    "evaluate_volume",
    "probabilities_to_original",
    "summarize",
    "volume_dice",
    "volume_hd95",
    "write_mask_like",
]
