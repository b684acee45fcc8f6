"""A synthetic second rater: a seeded, realistic disagreement with a reference label map.

Inter-rater differences on prostate MR are mostly systematic, not random speckle (Litjens et al.,
"Evaluation of prostate segmentation algorithms for MRI: the PROMISE12 challenge", MedIA 2014: the second
observer's Dice is about 0.8–0.9): one rater draws the boundary a little wider or tighter than another,
registers the outline a little off, and disagrees on where apex and base end. :func:`rater_labels` does
exactly these three things to a [S, H, W] label map, all in mm, so the disagreement is the same on any
grid: a grey dilation or erosion of every slice by a disk of 0.6–2 mm (for K > 2 the higher labels grow
into the lower ones, or shrink), an in-plane shift of up to 1.5 mm per axis, and, with probability 1/2
each, the loss of the first or the last slice holding foreground. Only label values of the input appear.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

MARGIN_MM = (0.6, 2.0)
SHIFT_MM = 1.5
END_SLICE_LOSS = 0.5


def _disk(radius: int) -> np.ndarray:
    """[1, 2r+1, 2r+1] bool in-plane disk footprint."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2)[None]


def rater_labels(labels: np.ndarray, spacing: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """A second rater's [S, H, W] uint8 label map for ``labels`` (same shape, same label values).

    Args:
        labels: [S, H, W] uint8 reference label values.
        spacing: Voxel size (z, y, x) in mm.
        rng: The rater's own generator (one per case).
    """
    pixel = float(min(spacing[1:]))
    radius = max(1, round(rng.uniform(*MARGIN_MM) / pixel))
    grow = rng.random() < 0.5
    shift = np.rint(rng.uniform(-SHIFT_MM, SHIFT_MM, 2) / np.asarray(spacing[1:], dtype=float)).astype(int)
    drop_first, drop_last = rng.random(2) < END_SLICE_LOSS
    morph = ndimage.grey_dilation if grow else ndimage.grey_erosion
    drawn = morph(labels, footprint=_disk(radius), mode="constant", cval=0)
    drawn = ndimage.shift(drawn, (0, *shift), order=0, mode="constant", cval=0)
    filled = np.nonzero(drawn.reshape(drawn.shape[0], -1).any(axis=1))[0]
    if filled.size > 2:
        drawn[filled[0]] = 0 if drop_first else drawn[filled[0]]
        drawn[filled[-1]] = 0 if drop_last else drawn[filled[-1]]
    return drawn.astype(np.uint8)
