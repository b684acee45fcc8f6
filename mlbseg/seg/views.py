"""Five geometric views of a batch, their exact inverse, and pseudo-label averaging (docs/reference.md §6.5).

Every view is an axis-aligned scale about the image centre in the normalised coordinates of
:func:`torch.nn.functional.affine_grid` (``align_corners=False``), so the views of all samples come from one
``affine_grid`` + ``grid_sample`` call and each view has an exact inverse:

- identity: scale 1;
- zoom-in by p (resize to (H+2p)×(W+2p), centre-crop back): scale (W/(W+2p), H/(H+2p));
- zoom-out by p (resize to (H−2p)×(W−2p), zero-pad centred): scale (W/(W−2p), H/(H−2p)), zeros outside;
- flip (vertical = rows, horizontal = columns, or both): scale −1 along the flipped axes.

Views are stacked sample-major: rows 5i..5i+4 are identity, zoom-in by p_in, zoom-out by p1, zoom-out by p2
(p1 ≠ p2) and the flip of sample i. Bilinear resampling here equals ``F.interpolate(..., "bilinear")``
followed by the crop or the pad, up to float rounding. Unlike the reference (docs/reference.md §7 items 42–43)
nothing leaves the device, there is no per-sample loop, and pixels a view never saw (the border a zoom-in
crops away) are marked invalid instead of being averaged in as zeros.

Geometry (grids, resampling) runs in float32 (float64 for float64 input), which is also what autocast does
with ``grid_sample``; results are returned in the input dtype.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mlbseg.errors import UserError
from mlbseg.seg.label_space import hard_labels, label_maps

NUM_VIEWS = 5
DEFAULT_ZOOM_PADS: tuple[int, ...] = tuple(range(4, 31, 2))  # {4, 6, ..., 30}, as in the reference
# (x, y) scales of the flips, in affine_grid's (width, height) order: vertical (rows), horizontal, both.
_FLIP_SCALES = ((1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0))
# A source coordinate within this of the view's edge (±1) counts as inside; far below half a pixel.
_EDGE_TOLERANCE = 1e-5


@dataclass(frozen=True)
class ViewParams:
    """Geometry of the views made by :func:`make_views`, on the images' device.

    Attributes:
        theta: [5B, 2, 3] sampling matrices (``F.affine_grid`` convention, ``align_corners=False``): view
            pixel → pixel of the original image, float32 (float64 for float64 images).
        inverse_theta: [5B, 2, 3] their exact inverses: original-image pixel → view pixel.
    """

    theta: Tensor
    inverse_theta: Tensor

    @property
    def batch_size(self) -> int:
        """Number of original samples B."""
        return self.theta.shape[0] // NUM_VIEWS


def make_views(
    images: Tensor,
    labels: Sequence[Tensor],
    generator: torch.Generator,
    zoom_pads: Sequence[int] = DEFAULT_ZOOM_PADS,
    *,
    num_labels: int = 2,
) -> tuple[Tensor, tuple[Tensor, ...], ViewParams]:
    """Five views per sample: identity, zoom-in, two distinct zoom-outs and a flip (docs/reference.md §6.5).

    Per sample, p_in is drawn uniformly from ``zoom_pads``, (p1, p2) without replacement from ``zoom_pads``,
    and the flip uniformly from {vertical, horizontal, both}, all with ``generator``.

    Args:
        images: [B, C, H, W] floating point images.
        labels: Class maps, each [B, 1, H, W] with class indices 0..K−1 (any dtype; binary 0/1), e.g. the
            noisy and the clean label.
        generator: Source of all randomness; must live on the images' device.
        zoom_pads: Candidate pads p in pixels (at least two distinct values, 2·max(p) < min(H, W)).
        num_labels: K, the number of labels with the background.

    Raises:
        UserError: ``zoom_pads`` has fewer than two distinct values or a pad too large for the images.

    Returns:
        View images [5B, C, H, W] (bilinear, zero outside the image), view labels (one [5B, 1, H, W] tensor
        per input class map, in the images' dtype: the label maps warped bilinearly, then
        :func:`~mlbseg.seg.label_space.hard_labels`, i.e. ``> 0.5`` for binary, which is symmetric and
        unbiased, unlike the reference's dataset-level ``> 0``, and the argmax of the warped one-hot maps
        for K > 2; background outside the image) and the views' :class:`ViewParams`.
    """
    batch, channels, height, width = images.shape
    dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    pads, flips, size = _constants(tuple(zoom_pads), height, width, device=images.device, dtype=dtype)
    scales = _draw_scales(batch, pads=pads, flips=flips, size=size, generator=generator)  # [B, 5, 2]
    params = ViewParams(_scale_matrices(scales), _scale_matrices(scales.reciprocal()))
    maps = [label_maps(label.to(images.dtype), num_labels) for label in labels]  # each [B, C_out, H, W]
    stack = torch.cat([images, *maps], dim=1)  # [B, C + L·C_out, H, W]
    warped = warp_sample_major(stack, params.theta)  # [5B, C + L·C_out, H, W]
    view_images, *view_maps = warped.split([channels] + [m.shape[1] for m in maps], dim=1)
    return view_images, tuple(hard_labels(m) for m in view_maps), params


def warp_sample_major(stack: Tensor, theta: Tensor) -> Tensor:
    """Resample each of B maps into its 5 views (bilinear, zeros outside).

    Args:
        stack: [B, C, H, W] maps in the original frame.
        theta: [5B, 2, 3] per-view sampling matrices (e.g. ``ViewParams.theta``).

    Returns:
        [5B, C, H, W] views, sample-major, in ``stack``'s dtype.
    """
    batch, channels, height, width = stack.shape
    grid = F.affine_grid(theta, [theta.shape[0], 1, height, width], align_corners=False)  # [5B, H, W, 2]
    # The 5 views of a sample share one input: stack their grids along H instead of repeating the input.
    grid = grid.view(batch, NUM_VIEWS * height, width, 2)
    warped = F.grid_sample(
        stack.to(grid.dtype), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    warped = warped.view(batch, channels, NUM_VIEWS, height, width).transpose(1, 2)  # [B, 5, C, H, W]
    return warped.reshape(batch * NUM_VIEWS, channels, height, width).to(stack.dtype)


def to_reference_frame(view_maps: Tensor, params: ViewParams) -> tuple[Tensor, Tensor]:
    """Map every view's map back to the coordinates of its sample's identity view (exact inverse affine).

    Args:
        view_maps: [5B, C, H, W] maps in the views' geometry (e.g. sigmoid probabilities), sample-major.
        params: The views' geometry from :func:`make_views`.

    Returns:
        ``maps`` [5B, C, H, W] in the input dtype, bilinear, 0 where invalid; ``valid`` [5B, 1, H, W] bool,
        True where the source point lies inside the view (False e.g. on the border a zoom-in cropped away;
        always True for the identity, zoom-out and flip views).
    """
    maps, valid = reference_frame_float(view_maps, params)
    return maps.to(view_maps.dtype), valid


def reference_frame_float(view_maps: Tensor, params: ViewParams) -> tuple[Tensor, Tensor]:
    """:func:`to_reference_frame` with ``maps`` left in the geometry dtype (float32/64) for reductions."""
    views, _, height, width = view_maps.shape
    grid = F.affine_grid(
        params.inverse_theta, [views, 1, height, width], align_corners=False
    )  # [5B, H, W, 2]
    valid = (grid.abs() <= 1 + _EDGE_TOLERANCE).all(dim=-1).unsqueeze(1)  # [5B, 1, H, W]
    # NOTE: sample no further out than the last pixel centre of the view's image content (the whole view,
    # or the un-padded centre of a zoom-out): the border of the original frame then takes the content's edge
    # value instead of a blend with the zoom-out padding (measured: 18% error on the outer ring otherwise).
    content = params.inverse_theta.diagonal(dim1=-2, dim2=-1).abs().clamp(max=1)  # [5B, 2] half-extent
    limit = content.clone()
    limit[:, 0] -= 1 / width  # minus half a pixel; scalar arithmetic, no host-to-device copy
    limit[:, 1] -= 1 / height
    limit = limit[:, None, None, :]  # [5B, 1, 1, 2]
    grid = torch.maximum(torch.minimum(grid, limit), -limit)
    maps = F.grid_sample(
        view_maps.to(grid.dtype), grid, mode="bilinear", padding_mode="border", align_corners=False
    )  # [5B, C, H, W]
    return maps * valid, valid


def average_pseudo_labels(view_probs: Tensor, params: ViewParams) -> Tensor:
    """Hard multi-view pseudo-labels: the masked mean of the back-mapped views, re-projected.

    The reference's averaging is docs/reference.md §6.6; its zero-padded borders are §7 item 43.

    Per sample, the five back-mapped probability maps are averaged over the views that saw each pixel (the
    identity view sees all), the mean is warped into every view's geometry with the forward transforms
    (zeros outside the image, as for the view labels) and made hard with
    :func:`~mlbseg.seg.label_space.hard_labels`: thresholded at 0.5 (binary sigmoid), or the argmax of the
    view-averaged softmax (K > 2 classes). No gradient flows.

    Args:
        view_probs: [5B, C, H, W] probabilities in [0, 1] of the views, sample-major (C = 1: the foreground
            probability; C = K: the softmax).
        params: The views' geometry from :func:`make_views`.

    Returns:
        [5B, 1, H, W] pseudo-labels, class indices (binary 0/1) in ``view_probs``' dtype.
    """
    maps, valid = reference_frame_float(view_probs.detach(), params)  # [5B, C, H, W], [5B, 1, H, W]
    batch, shape = params.batch_size, maps.shape[1:]
    maps, valid = maps.view(batch, NUM_VIEWS, *shape), valid.view(batch, NUM_VIEWS, *valid.shape[1:])
    mean = maps.sum(dim=1) / valid.sum(dim=1)  # [B, C, H, W]; the identity view makes the count ≥ 1
    return hard_labels(warp_sample_major(mean, params.theta)).to(view_probs.dtype)


def _draw_scales(
    batch: int, *, pads: Tensor, flips: Tensor, size: Tensor, generator: torch.Generator
) -> Tensor:
    """Per-view (x, y) scales [B, 5, 2]: identity, zoom-in, zoom-out ×2, flip.

    ``pads`` [K] are the distinct candidate pads, ``flips`` [3, 2] the flip scales, ``size`` [2] is (W, H).
    """
    device = pads.device
    zoom_in = pads[torch.randint(len(pads), (batch,), generator=generator, device=device)]  # [B]
    order = torch.rand(batch, len(pads), generator=generator, device=device).argsort(dim=1)  # [B, K]
    zoom_out = pads[order[:, :2]]  # [B, 2], distinct: a random permutation's first two entries
    flip = flips[torch.randint(len(flips), (batch,), generator=generator, device=device)]  # [B, 2]
    zoom_in_scale = size / (size + 2 * zoom_in[:, None])  # [B, 2]
    zoom_out_scale = size / (size - 2 * zoom_out[:, :, None])  # [B, 2, 2]
    identity = torch.ones_like(zoom_in_scale)
    return torch.stack([identity, zoom_in_scale, zoom_out_scale[:, 0], zoom_out_scale[:, 1], flip], dim=1)


@functools.lru_cache(maxsize=16)
def _constants(
    zoom_pads: tuple[int, ...], height: int, width: int, *, device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """Validated pads [K], flip scales [3, 2] and (W, H) [2] on ``device``, cached across steps."""
    if len(set(zoom_pads)) < 2 or min(zoom_pads) < 0 or 2 * max(zoom_pads) >= min(height, width):
        raise UserError(
            f"zoom_pads must hold at least two distinct values p with 0 <= p and 2p < {min(height, width)} "
            f"(the image side); got {list(zoom_pads)}"
        )
    pads = torch.tensor(sorted(set(zoom_pads)), dtype=dtype, device=device)
    flips = torch.tensor(_FLIP_SCALES, dtype=dtype, device=device)
    size = torch.tensor([width, height], dtype=dtype, device=device)
    return pads, flips, size


def _scale_matrices(scales: Tensor) -> Tensor:
    """[B, 5, 2] (x, y) scales → [5B, 2, 3] affine matrices without translation."""
    linear = torch.diag_embed(scales).flatten(0, 1)  # [5B, 2, 2]
    return F.pad(linear, (0, 1))  # [5B, 2, 3]
