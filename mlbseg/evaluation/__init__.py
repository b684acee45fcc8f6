"""Evaluation at the original geometry (DESIGN.md §5) and mask export in a volume's own header.

- :mod:`~mlbseg.evaluation.resample`: slice-grid probabilities back to the original in-plane size.
- :mod:`~mlbseg.evaluation.metrics`: per-volume Dice and HD95 (mm), and their summary over cases.
- :mod:`~mlbseg.evaluation.export`: read a volume as (z, y, x); write a mask with a reference's geometry.
"""

from __future__ import annotations

from mlbseg.evaluation.export import read_volume_zyx, write_mask_like
from mlbseg.evaluation.metrics import evaluate_volume, summarize, volume_dice, volume_hd95
from mlbseg.evaluation.resample import probabilities_to_original

__all__ = [
    "evaluate_volume",
    "probabilities_to_original",
    "read_volume_zyx",
    "summarize",
    "volume_dice",
    "volume_hd95",
    "write_mask_like",
]
