"""Calibrate the noise knob of each level so the mean noisy-vs-clean Dice hits the paper's target.

For one level, every train case gets its own seeded draws (:mod:`mlbseg.prep.noise_models`: the relative
model's strength s ∈ [0, 1] or the reference model's kernel scale c ∈ [0, 4]); with those held fixed, the
mean over cases of the per-volume 3-D Dice at the prepared resolution falls as the knob grows, so
bisection on [0, max] finds the target to within :data:`TOLERANCE`. Cases whose reference mask is empty
cannot be corrupted and are left out of the mean. The result depends only on the masks, their ids, the
seed and the model: not on case order or worker count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlbseg.prep.noise import LEVELS, TARGET_DICE
from mlbseg.prep.noise_models import RELATIVE, NoiseModel

TOLERANCE = 0.002  # stop bisecting once the mean Dice is this close to the target
MAX_STEPS = 40


@dataclass(frozen=True)
class Calibration:
    """The knob value chosen for one level and the mean Dice it gives on the calibration cases."""

    level: str
    target: float
    strength: float
    mean_dice: float


def mean_dice(
    cases: Sequence[Any],
    strength: float,
    blocked: Sequence[np.ndarray | None] | None = None,
    *,
    model: NoiseModel = RELATIVE,
) -> float:
    """Mean per-volume Dice at knob value ``strength`` over the cases with foreground (1.0 if none).

    ``cases``: the model's cases (:attr:`NoiseModel.case`); ``blocked``: per case, the pixels its noisy
    mask loses to other structures (:attr:`NoiseModel.dice`).
    """
    blocked = blocked or [None] * len(cases)
    scores = [
        model.dice(case, strength, lost)
        for case, lost in zip(cases, blocked, strict=True)
        if model.has_foreground(case)
    ]
    return math.fsum(scores) / len(scores) if scores else 1.0


def calibrate_strength(
    cases: Sequence[Any],
    target: float,
    blocked: Sequence[np.ndarray | None] | None = None,
    *,
    model: NoiseModel = RELATIVE,
) -> tuple[float, float]:
    """Bisect the knob on [0, max] until the mean Dice is within TOLERANCE of ``target``; (knob, Dice).

    If even the largest knob value stays above the target, returns it and its mean (the caller reports
    the miss). ``blocked`` as for :func:`mean_dice`.
    """

    def mean_dice_at(strength: float) -> float:
        return mean_dice(cases, strength, blocked, model=model)

    high = model.max_strength
    best = (high, mean_dice_at(high))
    if best[1] >= target:
        return best
    low = 0.0
    for _ in range(MAX_STEPS):
        middle = (low + high) / 2.0
        value = mean_dice_at(middle)
        if abs(value - target) < abs(best[1] - target):
            best = (middle, value)
        if abs(value - target) <= TOLERANCE:
            break
        low, high = (middle, high) if value > target else (low, middle)
    return best


def calibrate_levels(
    masks: Mapping[str, np.ndarray], seed: int, *, model: NoiseModel = RELATIVE
) -> dict[str, Calibration]:
    """Knob value per level (L1, L2, L3) for the train masks ``{case id: [S, H, W] uint8 0/1}``."""
    ids = sorted(masks)
    stacks = [model.stack(masks[case_id]) for case_id in ids]
    result = {}
    for level in LEVELS:
        cases = [
            model.case(stack, seed, case_id, level, None) for case_id, stack in zip(ids, stacks, strict=True)
        ]
        strength, value = calibrate_strength(cases, TARGET_DICE[level], model=model)
        result[level] = Calibration(level, TARGET_DICE[level], strength, value)
    return result


def noisy_levels(
    mask: np.ndarray,
    case_id: str,
    seed: int,
    strengths: Mapping[str, float],
    *,
    model: NoiseModel = RELATIVE,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The noisy masks ({level: [S, H, W] uint8 0/1}) of one case and their Dice with ``mask``."""
    stack = model.stack(mask)
    masks, dice = {}, {}
    for level, strength in strengths.items():
        case = model.case(stack, seed, case_id, level, None)
        masks[level] = model.noisy(case, strength)
        dice[level] = model.dice(case, strength, None)
    return masks, dice
