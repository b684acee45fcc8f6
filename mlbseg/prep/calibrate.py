"""Calibrate the noise strength of each level so the mean noisy-vs-clean Dice hits the paper's target.

For one level, every train case gets its own seeded draws (:func:`mlbseg.prep.noise.draw_noise`); with
those held fixed, the mean over cases of the per-volume 3-D Dice at the prepared resolution falls as the
strength s grows (:mod:`mlbseg.prep.noise`), so bisection on s ∈ [0, 1] finds the target to within
:data:`TOLERANCE`. Cases whose reference mask is empty cannot be corrupted and are left out of the mean.
The result depends only on the masks, their ids and the seed: not on case order or worker count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from mlbseg.prep.noise import (
    LEVELS,
    TARGET_DICE,
    NoiseCase,
    case_dice,
    draw_noise,
    noise_case,
    noisy_mask,
    slice_stack,
)

TOLERANCE = 0.002  # stop bisecting once the mean Dice is this close to the target
MAX_STEPS = 40


@dataclass(frozen=True)
class Calibration:
    """The strength chosen for one level and the mean Dice it gives on the calibration cases."""

    level: str
    target: float
    strength: float
    mean_dice: float


def mean_dice(
    cases: Sequence[NoiseCase], strength: float, blocked: Sequence[np.ndarray | None] | None = None
) -> float:
    """Mean per-volume Dice at strength s over the cases with foreground (1.0 if there are none).

    ``blocked``: per case, the pixels its noisy mask loses to other structures (:func:`case_dice`).
    """
    blocked = blocked or [None] * len(cases)
    scores = [
        case_dice(case, strength, lost)
        for case, lost in zip(cases, blocked, strict=True)
        if case.stack.slices.size
    ]
    return math.fsum(scores) / len(scores) if scores else 1.0


def calibrate_strength(
    cases: Sequence[NoiseCase], target: float, blocked: Sequence[np.ndarray | None] | None = None
) -> tuple[float, float]:
    """Bisect s ∈ [0, 1] until the mean Dice is within TOLERANCE of ``target``; (strength, mean Dice).

    If even s = 1 stays above the target, returns s = 1 and its mean (the caller reports the miss).
    ``blocked`` as for :func:`mean_dice`.
    """
    mean_dice_at = partial(mean_dice, cases, blocked=blocked)
    best = (1.0, mean_dice_at(1.0))
    if best[1] >= target:
        return best
    low, high = 0.0, 1.0
    for _ in range(MAX_STEPS):
        middle = (low + high) / 2.0
        value = mean_dice_at(middle)
        if abs(value - target) < abs(best[1] - target):
            best = (middle, value)
        if abs(value - target) <= TOLERANCE:
            break
        low, high = (middle, high) if value > target else (low, middle)
    return best


def calibrate_levels(masks: Mapping[str, np.ndarray], seed: int) -> dict[str, Calibration]:
    """Strength per level (L1, L2, L3) for the train masks ``{case id: [S, H, W] uint8 0/1}``."""
    ids = sorted(masks)
    stacks = [slice_stack(masks[case_id]) for case_id in ids]
    result = {}
    for level in LEVELS:
        cases = [
            noise_case(stack, draw_noise(seed, case_id, level, stack.shape[0]))
            for case_id, stack in zip(ids, stacks, strict=True)
        ]
        strength, value = calibrate_strength(cases, TARGET_DICE[level])
        result[level] = Calibration(level, TARGET_DICE[level], strength, value)
    return result


def noisy_levels(
    mask: np.ndarray, case_id: str, seed: int, strengths: Mapping[str, float]
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The noisy masks ({level: [S, H, W] uint8 0/1}) of one case and their Dice with ``mask``."""
    stack = slice_stack(mask)
    masks, dice = {}, {}
    for level, strength in strengths.items():
        case = noise_case(stack, draw_noise(seed, case_id, level, stack.shape[0]))
        masks[level] = noisy_mask(case, strength)
        dice[level] = case_dice(case, strength)
    return masks, dice
