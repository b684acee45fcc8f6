"""The published code's noise operations (``--noise-model reference``), with one kernel scale per level.

The L2B/MLB-Seg segmentation script (Wei et al., "Consistency-guided Meta-Learning for Bootstrapping
Semi-Supervised Medical Image Segmentation", MICCAI 2023; its ``data_preprocess.py``, docs/reference.md
§6.3) corrupts every slice of a train mask, at the 512² grid it ran on, by:

1. **slice loss**: a slice with at most 300 foreground pixels loses all of it;
2. **rotation** of every other slice by a uniform angle in ±20° about the image centre (nearest
   neighbour, same canvas, outside = background);
3. **erosion or dilation**, 50/50, with a square all-ones kernel whose side is drawn from the level's
   published table (:data:`KERNEL_TABLES`: five sides and their cumulative probabilities);
4. **ellipse replacement** with probability 0.5, when more than 300 pixels are left: the slice becomes the
   filled axis-aligned ellipse inscribed in its bounding box.

Here the kernel sides and the area limit are carried from 512² to the prepared slice grid (sides × H/512,
the limit × H·W/512²) and the sides are multiplied by one **scale** c per level, calibrated like the
relative model's strength (:mod:`mlbseg.prep.calibrate`) so that the mean Dice hits the paper's target:
c = 1 is the published table at the grid's resolution. A real side x = table side × H/512 × c becomes the
odd side 2h + 1 with h = ⌊(x − 1)/2 + u⌋ (at least 0; u ~ U(0, 1) drawn per slice), so its expected side
is x and the mask never shifts (the published even sides shift it half a pixel, docs/reference.md §7
item 38). Erosion and dilation by that square are exact thresholds of the rotated slice's signed
chessboard distance map, computed once per (case, level) and reused for every candidate scale.

Draws per slice (angle, erode or dilate, table side, rounding u, ellipse or not) come from
``SeedSequence([seed, level, SHA-256(case id)[, class]], spawn_key=(1,))``, a stream apart from the
relative model's, drawn once per (case, level) and reused for every scale (common random numbers).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from mlbseg.prep.noise import LEVELS, inscribed_ellipses

REFERENCE_GRID = 512  # the published script's slice size, in pixels per side
AREA_LIMIT = 300  # foreground pixels at 512²: slices at or under it are lost
ANGLE_LIMIT_DEG = 20.0
DILATE_RATE = 0.5
ELLIPSE_RATE = 0.5
KERNEL_TABLES = {  # level: (square kernel sides in px at 512², cumulative probabilities)
    "L1": ((7, 14, 21, 49, 63), (0.05, 0.1, 0.2, 0.6, 1.0)),
    "L2": ((7, 14, 21, 28, 35), (0.1, 0.2, 0.5, 0.7, 1.0)),
    "L3": ((7, 11, 13, 17, 21), (0.4, 0.6, 0.8, 0.9, 1.0)),
}
MAX_SCALE = 4.0  # the largest kernel scale calibration tries
_STREAM = 1  # spawn key: keeps these draws apart from the relative model's


@dataclass(frozen=True)
class ReferenceDraws:
    """The random numbers of one (case, level[, class]), one per slice ([S] arrays), shared by every scale."""

    angle: np.ndarray  # radians, uniform in ±ANGLE_LIMIT_DEG
    dilate: np.ndarray  # bool; dilate (True) or erode (False)
    side: np.ndarray  # float, the kernel side drawn from the level's table, px at 512²
    rounding: np.ndarray  # U(0, 1), the stochastic rounding of the half-side
    ellipse: np.ndarray  # bool; replace by the ellipse (when over the area limit)


def kernel_choice(uniform: np.ndarray, cumulative: tuple[float, ...]) -> np.ndarray:
    """Index of the kernel each U(0, 1) number picks: the first whose cumulative probability exceeds it.

    Example:
        >>> kernel_choice(np.array([0.0, 0.39, 0.4, 0.95]), (0.4, 0.6, 0.8, 0.9, 1.0))
        array([0, 0, 1, 4])
    """
    return np.searchsorted(np.asarray(cumulative), uniform, side="right")


def draw_reference_noise(
    seed: int, case_id: str, level: str, num_slices: int, label: int | None = None
) -> ReferenceDraws:
    """Per-slice draws for ``case_id`` at ``level`` from its own seeded stream (never the global RNG).

    ``label``: the class of a multi-class label map (its own stream per class); None for binary masks.
    """
    digest = hashlib.sha256(case_id.encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    entropy = [seed, LEVELS.index(level) + 1, *words, *([] if label is None else [label])]
    rng = np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(_STREAM,)))
    sides, cumulative = KERNEL_TABLES[level]
    return ReferenceDraws(
        angle=np.deg2rad(rng.uniform(-ANGLE_LIMIT_DEG, ANGLE_LIMIT_DEG, num_slices)),
        dilate=rng.random(num_slices) >= DILATE_RATE,
        side=np.asarray(sides, dtype=np.float64)[kernel_choice(rng.random(num_slices), cumulative)],
        rounding=rng.random(num_slices),
        ellipse=rng.random(num_slices) < ELLIPSE_RATE,
    )


def rotate_masks(
    masks: np.ndarray, angles: np.ndarray, region: tuple[slice, slice] | None = None
) -> np.ndarray:
    """Rotate each slice of a [K, H, W] bool stack by its angle (radians) about the image centre.

    The centre is ((H − 1)/2, (W − 1)/2) in pixel indices; nearest neighbour (source positions rounded
    to the nearest pixel, halves to even), vectorised over the stack; pixels from outside the slice are
    background. ``region``: (rows, cols) of the output slice to compute ([K, h, w]; default: all of it).
    """
    num, height, width = masks.shape
    region = region or (slice(0, height), slice(0, width))
    centre = ((height - 1) / 2.0, (width - 1) / 2.0)
    rows = np.arange(height, dtype=np.float64)[region[0]][None, :, None] - centre[0]  # [1, h, 1]
    cols = np.arange(width, dtype=np.float64)[region[1]][None, None, :] - centre[1]  # [1, 1, w]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]  # [K, 1, 1]
    src_rows = np.rint(centre[0] + cos * rows - sin * cols).astype(np.int64)  # [K, h, w]
    src_cols = np.rint(centre[1] + sin * rows + cos * cols).astype(np.int64)
    inside = (src_rows >= 0) & (src_rows < height) & (src_cols >= 0) & (src_cols < width)
    src_slices = np.broadcast_to(np.arange(num)[:, None, None], src_rows.shape)
    picked = masks[src_slices, np.clip(src_rows, 0, height - 1), np.clip(src_cols, 0, width - 1)]
    return picked & inside


def _rotated_region(masks: np.ndarray, angles: np.ndarray) -> tuple[slice, slice]:
    """(rows, cols) of the slice that holds every slice of [K, H, W] ``masks`` rotated by its angle.

    The foreground's bounding box corners turned either way by each angle, plus a pixel for rounding.
    """
    _, height, width = masks.shape
    _, rows, cols = np.nonzero(masks)
    centre = np.array([(height - 1) / 2.0, (width - 1) / 2.0])
    corner_rows = np.array([rows.min(), rows.min(), rows.max(), rows.max()]) - centre[0]  # [4]
    corner_cols = np.array([cols.min(), cols.max(), cols.min(), cols.max()]) - centre[1]
    cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]  # [K, 1]
    turned_rows = np.stack([cos * corner_rows + sin * corner_cols, cos * corner_rows - sin * corner_cols])
    turned_cols = np.stack([cos * corner_cols - sin * corner_rows, cos * corner_cols + sin * corner_rows])
    top = max(int(np.floor(turned_rows.min() + centre[0])) - 1, 0)
    left = max(int(np.floor(turned_cols.min() + centre[1])) - 1, 0)
    bottom = min(int(np.ceil(turned_rows.max() + centre[0])) + 2, height)
    right = min(int(np.ceil(turned_cols.max() + centre[1])) + 2, width)
    return slice(top, max(bottom, top)), slice(left, max(right, left))


def chessboard_distance(masks: np.ndarray) -> np.ndarray:
    """Signed chessboard distance of each slice of a [K, H, W] bool stack; int32, inside ≤ 0, outside ≥ 1.

    ``d <= h`` is the dilation and ``d <= -h`` the erosion by the (2h + 1)² square, for integer h ≥ 0;
    outside the slice counts as background. Example (the middle row of a 3 × 3 square in a 7 × 7 slice):
        >>> square = np.zeros((1, 7, 7), dtype=bool); square[0, 2:5, 2:5] = True
        >>> chessboard_distance(square)[0, 3]
        array([ 2,  1,  0, -1,  0,  1,  2], dtype=int32)
    """
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))  # background border: distances inside stay finite
    out = np.empty(padded.shape, dtype=np.int32)
    for k, mask in enumerate(padded):  # whole-slice transforms; slices are independent 2-D problems
        inside = ndimage.distance_transform_cdt(mask, metric="chessboard")
        outside = ndimage.distance_transform_cdt(~mask, metric="chessboard")
        out[k] = np.where(mask, 1 - inside, outside)
    return out[:, 1:-1, 1:-1]


@dataclass(frozen=True)
class ReferenceStack:
    """The level-independent part of a case for this model.

    Attributes:
        shape: (S, H, W) of the full mask.
        slices: [K] indices of the slices over the area limit (the ones that keep foreground).
        clean: [K, H, W] bool, their reference masks.
        total: Foreground pixels of the whole reference volume (the lost slices' included).
        limit: The area limit at this grid, pixels.
        grid_scale: Pixels per pixel of the 512² grid along a side (√(H·W) / 512).
    """

    shape: tuple[int, int, int]
    slices: np.ndarray
    clean: np.ndarray
    total: int
    limit: float
    grid_scale: float


@dataclass(frozen=True)
class ReferenceCase:
    """One (case, level[, class]): its rotated slices, cropped, and the per-slice draws, ready for any scale.

    Attributes:
        stack: The case's :class:`ReferenceStack`.
        box: (rows, cols) crop of the full slice that holds every possible noisy mask.
        clean: [K, h, w] bool, the reference in the crop.
        distance: [K, h, w] int32 signed chessboard distance of the rotated slices.
        side: [K] kernel side per unit scale in pixels of this grid.
        rounding, dilate, ellipse: [K] the draws of the kept slices.
    """

    stack: ReferenceStack
    box: tuple[slice, slice]
    clean: np.ndarray
    distance: np.ndarray
    side: np.ndarray
    rounding: np.ndarray
    dilate: np.ndarray
    ellipse: np.ndarray


def reference_stack(mask: np.ndarray) -> ReferenceStack:
    """The slices of a [S, H, W] 0/1 mask over the area limit carried to its grid, and its totals."""
    shape = (int(mask.shape[0]), int(mask.shape[1]), int(mask.shape[2]))
    clean = mask.astype(bool)
    pixels = shape[1] * shape[2]
    limit = AREA_LIMIT * pixels / REFERENCE_GRID**2
    area = clean.reshape(shape[0], -1).sum(axis=1)
    slices = np.nonzero(area > limit)[0]
    return ReferenceStack(
        shape, slices, clean[slices], int(area.sum()), limit, float(np.sqrt(pixels)) / REFERENCE_GRID
    )


def reference_case(stack: ReferenceStack, draws: ReferenceDraws) -> ReferenceCase:
    """Rotate the kept slices by their drawn angles and crop them to where any scale's noise can reach."""
    picked = stack.slices
    side = draws.side[picked] * stack.grid_scale
    rotated = np.zeros(stack.clean.shape, dtype=bool)  # [K, H, W]
    if picked.size:
        region = _rotated_region(stack.clean, draws.angle[picked])
        rotated[:, region[0], region[1]] = rotate_masks(stack.clean, draws.angle[picked], region)
    box = (slice(0, 0), slice(0, 0))
    if rotated.any():
        _, rows, cols = np.nonzero(rotated)
        margin = int(np.ceil(side.max() * MAX_SCALE / 2.0)) + 2  # the largest half-side, and a border
        height, width = stack.shape[1:]
        box = (
            slice(max(rows.min() - margin, 0), min(rows.max() + margin + 1, height)),
            slice(max(cols.min() - margin, 0), min(cols.max() + margin + 1, width)),
        )
    return ReferenceCase(
        stack=stack,
        box=box,
        clean=stack.clean[:, box[0], box[1]],
        distance=chessboard_distance(rotated[:, box[0], box[1]]),
        side=side,
        rounding=draws.rounding[picked],
        dilate=draws.dilate[picked],
        ellipse=draws.ellipse[picked],
    )


def half_sides(case: ReferenceCase, scale: float) -> np.ndarray:
    """[K] int half-sides h of the square kernels at ``scale``: ⌊(x − 1)/2 + u⌋, x the real side, h ≥ 0."""
    return np.maximum(np.floor((case.side * scale - 1.0) / 2.0 + case.rounding), 0.0).astype(np.int32)


def corrupt_reference(case: ReferenceCase, scale: float) -> np.ndarray:
    """The noisy kept slices of ``case`` at kernel scale ``scale`` ≥ 0: [K, h, w] bool in the crop."""
    half = half_sides(case, scale)
    threshold = np.where(case.dilate, half, -half)
    noisy = case.distance <= threshold[:, None, None]
    replace = case.ellipse & (noisy.sum(axis=(1, 2)) > case.stack.limit)
    if replace.any():
        noisy[replace] = inscribed_ellipses(noisy[replace])
    return noisy


def reference_dice(case: ReferenceCase, scale: float, blocked: np.ndarray | None = None) -> float:
    """3-D Dice of the noisy vs the clean mask of ``case`` at ``scale`` (1.0 when both are empty).

    ``blocked``: [K, h, w] bool in the crop, pixels lost to higher classes (:mod:`~mlbseg.prep.label_noise`).
    """
    if not case.stack.total:
        return 1.0
    noisy = corrupt_reference(case, scale)
    if blocked is not None:
        noisy &= ~blocked
    return 2.0 * np.count_nonzero(noisy & case.clean) / (np.count_nonzero(noisy) + case.stack.total)


def reference_noisy_mask(case: ReferenceCase, scale: float) -> np.ndarray:
    """The full [S, H, W] uint8 0/1 noisy mask of ``case`` at ``scale``."""
    stack = case.stack
    full = np.zeros(stack.shape, dtype=np.uint8)
    if case.clean.size:
        full[stack.slices, case.box[0], case.box[1]] = corrupt_reference(case, scale)
    return full
