"""Dataset-level augmentation on the device: a random horizontal flip and small rotation (docs/reference.md).

The reference re-seeds the global RNGs per item so that image and masks get the same PIL transform, and
thresholds bilinearly resized masks at ``> 0`` (a systematic dilation, §7 item 40–41). Here one affine warp
per batch applies the same per-sample parameters to the image and all its masks: images bilinear, masks
nearest (no dilation; class maps keep their class indices 0..K−1), zero fill (background), randomness only
from an explicit generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def random_flip_rotate(
    images: Tensor,
    masks: Sequence[Tensor],
    generator: torch.Generator,
    *,
    max_degrees: float = 10.0,
    flip_prob: float = 0.5,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Per sample: horizontal flip with probability ``flip_prob``, then a rotation uniform in ±max_degrees.

    The rotation is about the image centre in pixel units (a true rotation also for H ≠ W), without
    expanding the canvas; pixels that come from outside the image are 0.

    Args:
        images: [B, C, H, W] floating point images.
        masks: Class maps of the same samples, each [B, 1, H, W] (class indices 0..K−1, binary 0/1; any
            dtype).
        generator: Source of all randomness; must live on the images' device.
        max_degrees: Largest rotation angle in degrees (0 disables rotation).
        flip_prob: Probability of a horizontal (left-right) flip.

    Returns:
        Augmented images [B, C, H, W] (bilinear, input dtype) and masks (nearest, each in its input dtype,
        still class indices).
    """
    batch, _, height, width = images.shape
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    uniform = torch.rand(2, batch, generator=generator, device=images.device, dtype=dtype)  # [2, B]
    flip_sign = torch.where(uniform[0] < flip_prob, -1.0, 1.0).to(dtype)  # [B]
    angle = (2 * uniform[1] - 1) * math.radians(max_degrees)  # [B]
    theta = _flip_rotate_matrices(flip_sign, angle, height, width)  # [B, 2, 3]
    grid = F.affine_grid(theta, [batch, 1, height, width], align_corners=False)  # [B, H, W, 2]
    out_images = F.grid_sample(
        images.to(dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    if not masks:
        return out_images.to(images.dtype), ()
    stacked = torch.cat([mask.to(dtype) for mask in masks], dim=1)  # [B, M, H, W]
    warped = F.grid_sample(stacked, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    out_masks = tuple(m.to(mask.dtype) for m, mask in zip(warped.split(1, dim=1), masks, strict=True))
    return out_images.to(images.dtype), out_masks


def _flip_rotate_matrices(flip_sign: Tensor, angle: Tensor, height: int, width: int) -> Tensor:
    """Sampling matrices [B, 2, 3] for "flip x by ``flip_sign`` [B], then rotate by ``angle`` [B] (radians)".

    Output pixel y samples the input at F·R·y, with R a rotation in pixel units expressed in the normalised
    coordinates of ``affine_grid``: R_norm = D R D⁻¹, D = diag(1/W, 1/H) up to a common factor.
    """
    cos, sin = angle.cos(), angle.sin()
    aspect = height / width
    row_x = torch.stack([cos, -sin * aspect, torch.zeros_like(cos)], dim=-1) * flip_sign[:, None]  # [B, 3]
    row_y = torch.stack([sin / aspect, cos, torch.zeros_like(cos)], dim=-1)  # [B, 3]
    return torch.stack([row_x, row_y], dim=1)
