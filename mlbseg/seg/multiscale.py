"""ADELE's multi-scale consistency: the network's forwards on rescaled inputs and their consistency term.

Liu, Liu, Zhu, Shen & Fernandez-Granda, "Adaptive Early-Learning Correction for Segmentation from Noisy
Annotations", CVPR 2022 (docs/method.md §5.3): besides the forward at scale 1, the network sees the batch
rescaled by a few factors (the authors' 0.7 and 1.5), each prediction is resized back to the batch's grid,
and the class probabilities of all scales are pulled towards their mean where that mean is confident. The
same mean over the scales drives the label correction. Pure tensor functions (the network is any callable
that maps images to logits), and :class:`AtScale`, a network at one scale as a module for eval-mode passes.

Shapes: images ``[V, C, h, w]``, logits ``[V, C_out, h, w]`` (binary C_out = 1), class (log-)probabilities
``[V, K, h, w]`` over every class (binary: background and foreground,
:func:`~mlbseg.seg.selection.class_log_probabilities`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The mixture of the scales' probabilities is clamped to [MIXTURE_FLOOR, 1 − MIXTURE_FLOOR] before its log.
MIXTURE_FLOOR = 1e-3


def rescaled_size(size: int, scale: float, divisor: int) -> int:
    """``size`` × ``scale`` rounded to the nearest multiple of ``divisor`` (halves up), at least ``divisor``.

    The network's input sides must be multiples of its size divisor
    (:func:`~mlbseg.seg.model.size_divisor`).

    Example:
        >>> rescaled_size(144, 0.7, 16), rescaled_size(144, 1.5, 16), rescaled_size(16, 0.3, 8)
        (96, 224, 8)
    """
    return divisor * max(1, math.floor(size * scale / divisor + 0.5))


def resize(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """[V, C, h, w] maps resized bilinearly (``align_corners=True``) to [V, C, *size]."""
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)


def forward_at_scale(
    forward: Callable[[Tensor], Tensor], images: Tensor, scale: float, divisor: int
) -> Tensor:
    """The logits of ``images`` rescaled by ``scale``, resized back to the images' grid.

    Args:
        forward: The network: [V, C, H, W] images → [V, C_out, H, W] logits (H, W multiples of ``divisor``).
        images: [V, C, h, w] images.
        scale: The factor of both sides (:func:`rescaled_size` rounds them to ``divisor``).
        divisor: The network's size divisor.

    Returns:
        [V, C_out, h, w] float32 logits, with gradients when ``forward`` has them.
    """
    height, width = images.shape[-2:]
    size = (rescaled_size(height, scale, divisor), rescaled_size(width, scale, divisor))
    return resize(forward(resize(images, size)).float(), (height, width))


def multiscale_consistency(log_probs: Sequence[Tensor], confidence: float) -> Tensor:
    """ADELE's consistency of S scales' predictions: Σ_s KL(p_s ‖ m) at the confident pixels of m.

    m = (1/S) Σ_s p_s, clamped to [:data:`MIXTURE_FLOOR`, 1 − :data:`MIXTURE_FLOOR`] (not detached: the
    gradient also flows through it). A pixel counts when its mixture is confident, max_k m_k ≥
    ``confidence`` (the authors' ρ); the others contribute 0 to the mean over all the batch's pixels.

    Args:
        log_probs: S tensors [V, K, h, w], each scale's class log-probabilities on the same grid.
        confidence: ρ in [0, 1).

    Returns:
        A scalar with gradients when its inputs have them: 0 when every scale predicts the same
        probabilities, all within the clamp (outside it, the clamped m is not the scales' own mean).
    """
    probs = [scale_log_probs.exp() for scale_log_probs in log_probs]  # S × [V, K, h, w]
    mixture = torch.stack(probs).mean(dim=0).clamp(MIXTURE_FLOOR, 1 - MIXTURE_FLOOR)  # [V, K, h, w]
    log_mixture = mixture.log()
    pairs = zip(probs, log_probs, strict=True)
    divergence = sum((p * (log_p - log_mixture)).sum(dim=1) for p, log_p in pairs)  # [V, h, w]
    confident = mixture.amax(dim=1) >= confidence  # [V, h, w]
    return (divergence * confident).mean()


class AtScale(nn.Module):
    """A network applied at ``scale`` (:func:`forward_at_scale`): [V, C, h, w] → [V, C_out, h, w] logits.

    A module, so that an eval-mode pass (:func:`~mlbseg.seg.inference.predict_probabilities`) switches
    the wrapped network's mode through it.
    """

    def __init__(self, network: nn.Module, scale: float, divisor: int) -> None:
        super().__init__()
        self.network, self.scale, self.divisor = network, scale, divisor

    def forward(self, images: Tensor) -> Tensor:
        """[V, C, h, w] images → [V, C_out, h, w] float32 logits of the rescaled images, resized back."""
        return forward_at_scale(self.network, images, self.scale, self.divisor)
