"""Synthetic noisy masks from the paper's operation families, with one strength knob s ∈ [0, 1].

The paper (docs/method.md §7.2) corrupts training masks by random rotation, erosion and dilation; the
published script (docs/reference.md §6.3) adds replacement by the bounding-box ellipse and drops small slices.
Its kernel tables are in pixels of whatever resolution it ran at, so the same table gives other Dice on other
data. Here every operation scales with **each slice's own gland size** and with one strength ``s``, so a level
is "the s whose mean Dice hits the target" (found by :mod:`mlbseg.prep.calibrate`) and transfers across
datasets and resolutions. For every foreground slice of a [S, H, W] mask, with R = √(area / π) in pixels:

1. **slice loss**: slices smaller than ``s · 0.3 ·`` (largest slice area) lose all foreground;
2. **rotation** about the volume's foreground centroid by a per-slice angle of 5°–25° (either sign),
   applied to a slice with probability ``min(1, 2 s)``;
3. **erosion or dilation** (50/50 per slice) by a disk of radius ``s · 2 · m · R``, m ~ U(0.3, 1), done
   exactly (sub-pixel) by thresholding the slice's signed Euclidean distance map, which commutes with the
   rotation, so one bilinear rotation of the distance map serves every s;
4. **ellipse replacement** with probability ``min(0.5, s)``: the slice becomes the filled axis-aligned
   ellipse inscribed in its bounding box (vectorised; no division by zero on thin boxes).

The random numbers of a (case, level) are drawn once from ``SeedSequence([seed, level, SHA-256(id)])``
and reused for every candidate s (common random numbers): each operation only grows with s, so the mean
Dice falls monotonically and continuously enough for bisection, and nothing depends on worker count or
case order. s = 0 returns the clean mask exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

TARGET_DICE = {"L1": 0.4148, "L2": 0.6206, "L3": 0.8031}  # docs/method.md §7.2
LEVELS = tuple(TARGET_DICE)

ANGLE_RANGE_DEG = (5.0, 25.0)
ROTATE_RATE = 2.0  # P(rotate a slice) = min(1, ROTATE_RATE · s)
MORPH_SCALE = 2.0  # disk radius = s · MORPH_SCALE · magnitude · R
MAGNITUDE_RANGE = (0.3, 1.0)
ELLIPSE_CAP = 0.5  # P(ellipse) = min(ELLIPSE_CAP, s)
LOSS_FRACTION = 0.3  # slices below s · LOSS_FRACTION · max area vanish


@dataclass(frozen=True)
class NoiseDraws:
    """The random numbers of one (case, level), one per slice ([S] arrays), shared by every strength."""

    angle: np.ndarray  # radians, |angle| in ANGLE_RANGE_DEG
    rotate: np.ndarray  # U(0, 1); the slice rotates when below min(1, ROTATE_RATE · s)
    dilate: np.ndarray  # bool; dilate (True) or erode (False)
    magnitude: np.ndarray  # U(MAGNITUDE_RANGE), scales the disk radius
    ellipse: np.ndarray  # U(0, 1); the slice becomes an ellipse when below min(ELLIPSE_CAP, s)


def draw_noise(seed: int, case_id: str, level: str, num_slices: int, label: int | None = None) -> NoiseDraws:
    """Per-slice draws for ``case_id`` at ``level``, from its own seeded stream (never the global RNG).

    ``label``: the class of a multi-class label map whose mask is corrupted (its own stream per class);
    None for binary masks (the stream of (seed, level, case) alone).
    """
    digest = hashlib.sha256(case_id.encode()).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    entropy = [seed, LEVELS.index(level) + 1, *words, *([] if label is None else [label])]
    rng = np.random.default_rng(np.random.SeedSequence(entropy))
    sign = np.where(rng.random(num_slices) < 0.5, -1.0, 1.0)
    return NoiseDraws(
        angle=np.deg2rad(sign * rng.uniform(*ANGLE_RANGE_DEG, num_slices)),
        rotate=rng.random(num_slices),
        dilate=rng.random(num_slices) < 0.5,
        magnitude=rng.uniform(*MAGNITUDE_RANGE, num_slices),
        ellipse=rng.random(num_slices),
    )


@dataclass(frozen=True)
class SliceStack:
    """The level-independent part of a case: its foreground slices, cropped to where noise can reach.

    Attributes:
        shape: (S, H, W) of the full mask.
        slices: [K] indices of the slices with foreground.
        box: (rows, cols) crop of the full slice that holds every possible noisy mask.
        clean: [K, h, w] bool, the reference mask in the crop.
        sdf: [K, h, w] float32 signed distance in pixels (inside ≤ −0.5, outside ≥ 0.5).
        area: [K] foreground pixels per slice.
        centre: (row, col) of the volume's foreground centroid in crop coordinates (rotation centre).
    """

    shape: tuple[int, int, int]
    slices: np.ndarray
    box: tuple[slice, slice]
    clean: np.ndarray
    sdf: np.ndarray
    area: np.ndarray
    centre: tuple[float, float]


@dataclass(frozen=True)
class NoiseCase:
    """One (case, level): its :class:`SliceStack` plus everything drawn for it, ready for any s.

    Attributes:
        stack: The case's foreground slices.
        rotated: [K, h, w] float32, ``stack.sdf`` of each slice rotated by its drawn angle.
        reach: [K] signed distance threshold per unit s (> 0 dilates, < 0 erodes).
        rotate, ellipse: [K] the draws that decide per-slice events.
    """

    stack: SliceStack
    rotated: np.ndarray
    reach: np.ndarray
    rotate: np.ndarray
    ellipse: np.ndarray


def signed_distance(masks: np.ndarray) -> np.ndarray:
    """Per-slice signed Euclidean distance of a [K, H, W] bool stack; float32, inside ≤ −0.5, outside ≥ 0.5.

    ``sdf <= t`` is exactly the dilation by the disk of radius t + 0.5 (t ≥ 0) and ``sdf <= -t`` the
    erosion by the open disk of radius t + 0.5, with real-valued t; outside the slice counts as
    background. Example:
        >>> signed_distance(np.array([[[0, 1, 1, 0]]], dtype=bool))
        array([[[ 0.5, -0.5, -0.5,  0.5]]], dtype=float32)
    """
    padded = np.pad(masks, ((0, 0), (1, 1), (1, 1)))  # background border: distances inside stay finite
    out = np.empty(padded.shape, dtype=np.float32)
    for k, mask in enumerate(padded):  # whole-slice transforms; slices are independent 2-D problems
        out[k] = np.where(
            mask, 0.5 - ndimage.distance_transform_edt(mask), ndimage.distance_transform_edt(~mask) - 0.5
        )
    return out[:, 1:-1, 1:-1]


def rotate_slices(fields: np.ndarray, angles: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """Rotate each slice of a [K, H, W] float stack by its own angle (radians) about ``centre`` (row, col).

    Bilinear, one ``map_coordinates`` call for the whole stack; samples outside repeat the edge.
    """
    num, height, width = fields.shape
    rows = np.arange(height, dtype=np.float64)[None, :, None] - centre[0]  # [1, H, 1]
    cols = np.arange(width, dtype=np.float64)[None, None, :] - centre[1]  # [1, 1, W]
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]  # [K, 1, 1]
    src_rows = centre[0] + cos * rows - sin * cols  # [K, H, W]
    src_cols = centre[1] + sin * rows + cos * cols
    src_slices = np.broadcast_to(np.arange(num, dtype=np.float64)[:, None, None], src_rows.shape)
    return ndimage.map_coordinates(fields, [src_slices, src_rows, src_cols], order=1, mode="nearest")


def inscribed_ellipses(masks: np.ndarray) -> np.ndarray:
    """Filled axis-aligned ellipse inscribed in each slice's bounding box; [K, H, W] bool in and out.

    The semi-axes are half the box's extent in pixels (the ellipse touches the outer pixel edges), so a
    one-pixel-thin box gives a line, never a division by zero. Empty slices stay empty. Example:
        >>> box = np.zeros((1, 7, 7), dtype=bool); box[0, 1:6, 1:6] = True
        >>> inscribed_ellipses(box)[0].astype(int)
        array([[0, 0, 0, 0, 0, 0, 0],
               [0, 0, 1, 1, 1, 0, 0],
               [0, 1, 1, 1, 1, 1, 0],
               [0, 1, 1, 1, 1, 1, 0],
               [0, 1, 1, 1, 1, 1, 0],
               [0, 0, 1, 1, 1, 0, 0],
               [0, 0, 0, 0, 0, 0, 0]])
    """
    rows, cols = masks.any(axis=2), masks.any(axis=1)  # [K, H], [K, W]
    present = rows.any(axis=1)[:, None, None]

    def centre_and_radius(profile: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        first = profile.argmax(axis=1)
        last = profile.shape[1] - 1 - profile[:, ::-1].argmax(axis=1)
        return (first + last)[:, None, None] / 2.0, (last - first + 1)[:, None, None] / 2.0

    row_c, row_r = centre_and_radius(rows)
    col_c, col_r = centre_and_radius(cols)
    grid_r = np.arange(masks.shape[1])[None, :, None]
    grid_c = np.arange(masks.shape[2])[None, None, :]
    return present & (((grid_r - row_c) / row_r) ** 2 + ((grid_c - col_c) / col_r) ** 2 <= 1.0)


def slice_stack(mask: np.ndarray) -> SliceStack:
    """Crop the foreground slices of a [S, H, W] 0/1 mask and compute their signed distance maps.

    The crop is the foreground's bounding box grown by the largest disk radius (s = 1) plus the farthest a
    pixel can move under the largest rotation, so every noisy mask fits in it.
    """
    shape = (int(mask.shape[0]), int(mask.shape[1]), int(mask.shape[2]))
    slices = np.nonzero(mask.reshape(shape[0], -1).any(axis=1))[0]
    clean = mask[slices].astype(bool)  # [K, H, W]
    area = clean.sum(axis=(1, 2)).astype(np.float64)
    if not slices.size:
        nothing = np.zeros((0, 0, 0), dtype=np.float32)
        return SliceStack(
            shape, slices, (slice(0, 0), slice(0, 0)), nothing.astype(bool), nothing, area, (0.0, 0.0)
        )
    _, rows, cols = np.nonzero(clean)
    centre = (float(rows.mean()), float(cols.mean()))
    farthest = float(np.sqrt((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2).max())
    sweep = 2.0 * np.sin(np.deg2rad(ANGLE_RANGE_DEG[1]) / 2.0) * farthest
    margin = int(np.ceil(MORPH_SCALE * MAGNITUDE_RANGE[1] * np.sqrt(area.max() / np.pi) + sweep)) + 2
    top, left = max(rows.min() - margin, 0), max(cols.min() - margin, 0)
    box = (slice(top, rows.max() + margin + 1), slice(left, cols.max() + margin + 1))
    clean = clean[:, box[0], box[1]]
    centre = (centre[0] - top, centre[1] - left)
    return SliceStack(shape, slices, box, clean, signed_distance(clean), area, centre)


def noise_case(stack: SliceStack, draws: NoiseDraws) -> NoiseCase:
    """Attach one level's draws to a case: rotate its distance maps and set its per-slice thresholds."""
    picked = stack.slices
    reach = MORPH_SCALE * draws.magnitude[picked] * np.sqrt(stack.area / np.pi)  # disk radius at s = 1
    rotated = rotate_slices(stack.sdf, draws.angle[picked], stack.centre) if picked.size else stack.sdf
    return NoiseCase(
        stack=stack,
        rotated=rotated,
        reach=np.where(draws.dilate[picked], reach, -reach),
        rotate=draws.rotate[picked],
        ellipse=draws.ellipse[picked],
    )


def corrupt(case: NoiseCase, strength: float) -> np.ndarray:
    """The noisy foreground slices of ``case`` at strength s ∈ [0, 1]: [K, h, w] bool in the crop."""
    rotate = case.rotate < min(1.0, ROTATE_RATE * strength)
    field = np.where(rotate[:, None, None], case.rotated, case.stack.sdf)
    noisy = field <= (strength * case.reach).astype(np.float32)[:, None, None]
    replace = case.ellipse < min(ELLIPSE_CAP, strength)
    if replace.any():
        noisy[replace] = inscribed_ellipses(noisy[replace])
    area = case.stack.area
    if area.size:
        noisy[area < strength * LOSS_FRACTION * area.max()] = False
    return noisy


def case_dice(case: NoiseCase, strength: float, blocked: np.ndarray | None = None) -> float:
    """3-D Dice of the noisy vs the clean mask of ``case`` at strength s (1.0 when both are empty).

    ``blocked``: [K, h, w] bool in the crop, pixels the noisy mask loses to another structure (the
    higher classes of a multi-class map, :mod:`mlbseg.prep.label_noise`); None: none.
    """
    clean = case.stack.clean
    if not clean.size:
        return 1.0
    noisy = corrupt(case, strength)
    if blocked is not None:
        noisy &= ~blocked
    return 2.0 * np.count_nonzero(noisy & clean) / (np.count_nonzero(noisy) + np.count_nonzero(clean))


def noisy_mask(case: NoiseCase, strength: float) -> np.ndarray:
    """The full [S, H, W] uint8 0/1 noisy mask of ``case`` at strength s."""
    stack = case.stack
    full = np.zeros(stack.shape, dtype=np.uint8)
    if stack.slices.size:
        full[stack.slices, stack.box[0], stack.box[1]] = corrupt(case, strength)
    return full
