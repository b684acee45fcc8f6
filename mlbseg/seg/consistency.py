"""Multi-view consistency loss of MLB-Seg (docs/reference.md §6.7), symmetric and restricted to valid pixels.

Deviations from the reference, on purpose:

- All 10 view pairs of a sample are compared in one common frame (the identity view's) instead of in the
  lower-indexed view's geometry; each pair is compared only where both views saw the pixel, so the border a
  zoom-in cropped away no longer pulls the other views toward 0 (docs/reference.md §7 item 43).
- By default gradient flows into *both* views of every pair. The reference detaches the mapped view through
  a numpy/cv2 round trip (docs/reference.md §7 item 44), which makes the loss one-sided for reasons of
  implementation, not design; ``pairing="one_sided"`` (``method.consistency_pairing``) restores that: each
  pair pulls only its lower-indexed view, the other detached.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from mlbseg.seg.views import NUM_VIEWS, ViewParams, reference_frame_float

PAIRINGS = ("both", "one_sided")  # gradient into both views of a pair, or the lower-indexed one only


def multiview_consistency(view_probs: Tensor, params: ViewParams, pairing: str = "both") -> Tensor:
    """Mean squared difference between every pair of a sample's views, in the identity view's frame.

    For each sample and each of the C(5, 2) = 10 view pairs, the squared difference of the two back-mapped
    maps is averaged over the class channels and the pixels both views saw; the loss is the mean over pairs
    and samples.

    Normalisation for K classes: the mean runs over the C channels too (as ``F.mse_loss`` does for the EMA
    term), not their sum. With the softmax of two classes the two channels differ by the same amount, so
    the mean is exactly the binary term on the one sigmoid channel; for K > 2 the squared distance of two
    probability vectors (at most 2) is divided by K, and a ``method.consistency_weight`` keeps its meaning
    per channel.

    Args:
        view_probs: [5B, C, H, W] probabilities in [0, 1] of the views, sample-major (from ``make_views``):
            C = 1 the sigmoid (binary), C = K the softmax.
        params: The views' geometry from :func:`mlbseg.seg.views.make_views`.
        pairing: ``both`` (gradient into both views of every pair) or ``one_sided`` (the published code's
            pairing: pair (i, j), i < j, pulls view i toward a detached view j; the value is the same).

    Returns:
        Scalar loss, differentiable w.r.t. every view (``one_sided``: every view but the last); float32
        (float64 for float64 input), as autocast computes losses, so half-precision probabilities do not
        lose the small differences.
    """
    maps, valid = reference_frame_float(view_probs, params)  # [5B, C, H, W], [5B, 1, H, W]
    batch = params.batch_size
    maps = maps.reshape(batch, NUM_VIEWS, -1)  # [B, 5, C·H·W]
    valid = valid.expand_as(view_probs).reshape(batch, NUM_VIEWS, -1)  # [B, 5, C·H·W]
    first, second = _view_pairs(view_probs.device)  # [10] each
    both = valid[:, first] & valid[:, second]  # [B, 10, C·H·W]
    other = maps[:, second]
    if pairing == "one_sided":
        other = other.detach()
    elif pairing != "both":
        raise ValueError(f"pairing {pairing!r}: choose one of {PAIRINGS}")
    squared = (maps[:, first] - other).square() * both  # [B, 10, C·H·W]
    per_pair = squared.sum(dim=-1) / both.sum(dim=-1).clamp(min=1)  # [B, 10]
    return per_pair.mean()


@functools.lru_cache(maxsize=4)
def _view_pairs(device: torch.device) -> tuple[Tensor, Tensor]:
    """Indices (i, j), i < j, of the 10 view pairs on ``device``, cached."""
    first, second = torch.triu_indices(NUM_VIEWS, NUM_VIEWS, offset=1, device=device)
    return first, second
