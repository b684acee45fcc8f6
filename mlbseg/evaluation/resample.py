"""Put slice-grid probabilities back onto a volume's original in-plane grid (docs/evaluation.md §1).

Prepare resizes every axial slice of the whole field of view to 144×144 with a bilinear, pixel-centre
(``align_corners=False``) resize and no crop. The inverse used for evaluation and prediction is the same
kind of resize in the other direction, applied to **probabilities** (never to thresholded labels, which
would staircase the boundary); the caller thresholds at 0.5 afterwards.
"""

from __future__ import annotations

from typing import overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


@overload
def probabilities_to_original(probs: np.ndarray, original_hw: tuple[int, int]) -> np.ndarray: ...


@overload
def probabilities_to_original(probs: Tensor, original_hw: tuple[int, int]) -> Tensor: ...


def probabilities_to_original(
    probs: np.ndarray | Tensor, original_hw: tuple[int, int]
) -> np.ndarray | Tensor:
    """Resize a stack of slice probabilities in-plane to the original height and width, channel by channel.

    All slices are resized in one batched ``F.interpolate`` call (bilinear, ``align_corners=False``,
    anti-aliased so that a smaller original grid is area-averaged rather than point-sampled; for the usual
    upsampling from 144² anti-aliasing changes nothing). The slice axis is never resampled. Each channel is
    resized on its own; bilinear weights are convex, so softmax probabilities still sum to 1 per pixel.

    Args:
        probs: Probabilities [S, h, w] (binary: foreground) or [S, C, h, w] (C = 1: foreground; C = K:
            softmax over the labels) in [0, 1], numpy array or tensor on any device. Any floating or
            integer dtype; computed in float32.
        original_hw: The original in-plane size (H, W) = (rows, columns) of the volume's (z, y, x) array.

    Returns:
        Probabilities [S, H, W] or [S, C, H, W] (as given), float32, in [0, 1]; a numpy array for numpy
        input, otherwise a tensor on the input's device.

    Example:
        >>> import numpy as np
        >>> probabilities_to_original(np.full((2, 4, 4), 0.75), (6, 10)).shape
        (2, 6, 10)
        >>> probabilities_to_original(np.full((2, 3, 4, 4), 0.25), (6, 10)).shape
        (2, 3, 6, 10)
    """
    if probs.ndim not in (3, 4):
        raise ValueError(f"probs must be [S, h, w] or [S, C, h, w], got shape {tuple(probs.shape)}")
    height, width = (int(n) for n in original_hw)
    as_numpy = isinstance(probs, np.ndarray)
    stack = torch.from_numpy(np.asarray(probs, dtype=np.float32)) if as_numpy else probs.float()
    channels = stack.unsqueeze(1) if stack.ndim == 3 else stack  # [S, C, h, w]
    resized = F.interpolate(
        channels, size=(height, width), mode="bilinear", align_corners=False, antialias=True
    )  # [S, C, H, W]
    resized = resized.clamp_(0.0, 1.0)  # bilinear weights are convex; clamp only removes rounding excursions
    resized = resized.squeeze(1) if stack.ndim == 3 else resized
    return resized.numpy() if as_numpy else resized
