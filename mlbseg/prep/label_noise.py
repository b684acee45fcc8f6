"""Synthetic noisy label maps with K > 2 classes: the binary noise per structure, calibrated per class.

MLB-Seg (Wei et al., "Consistency-guided Meta-Learning for Bootstrapping Semi-Supervised Medical Image
Segmentation", MICCAI 2023; docs/method.md §7.2) corrupts binary masks. For several structures (the
prostate's peripheral and transition zones) each foreground class ``c`` gets today's operation family
(:mod:`mlbseg.prep.noise`, or the published operations of :mod:`mlbseg.prep.reference_noise`: the
model of :mod:`mlbseg.prep.noise_models`) on its own binary mask ``labels == c``, with its own seeded
draws (``SeedSequence([seed, level, SHA-256(id), c])``) and its own strength (or kernel scale). The
noisy masks are composed into one label map in ascending class order, so where two noisy structures
overlap **the higher class wins**; a pixel no noisy structure covers is background. The noisy map
therefore only ever holds the dataset's label values.

Calibration, per level, runs from the highest class down: class K−1 loses nothing to the composition, so
its strength is bisected on its own Dice as in the binary case; each lower class is bisected on the Dice
of what remains of it after the higher classes' noisy masks (at their chosen strengths) have been laid
over it. So every class's composed per-volume Dice, averaged over the train cases holding that class,
hits the level's target, and so does their mean (the number ``prepare`` reports and checks to ±0.02).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlbseg.prep.calibrate import calibrate_strength
from mlbseg.prep.noise import LEVELS, TARGET_DICE
from mlbseg.prep.noise_models import RELATIVE, NoiseModel


@dataclass(frozen=True)
class LabelCalibration:
    """The strengths chosen for one level ({class value: s}) and the per-class mean Dice they give."""

    level: str
    target: float
    strengths: dict[int, float]
    class_dice: dict[int, float]


def foreground_dice(
    noisy: np.ndarray, reference: np.ndarray, num_labels: int
) -> tuple[float, dict[int, float]]:
    """Per-volume Dice of two label maps, per foreground class and their mean.

    Args:
        noisy: [S, H, W] uint8 label values 0..num_labels-1.
        reference: [S, H, W] uint8 label values, the map ``noisy`` is scored against.
        num_labels: K (background included).

    Returns:
        ``(mean, {value: dice})``: Dice per class 1..K-1 (1.0 where both maps lack the class, the
        evaluation's empty convention) and the mean over the classes present in either map (1.0 if none).

    Example:
        >>> a = np.array([[[0, 1, 1, 2]]], np.uint8); b = np.array([[[0, 1, 2, 2]]], np.uint8)
        >>> foreground_dice(a, b, 4)
        (0.6666666666666666, {1: 0.6666666666666666, 2: 0.6666666666666666, 3: 1.0})
    """
    per_class, present = {}, []
    for value in range(1, num_labels):
        noisy_c, reference_c = noisy == value, reference == value
        total = np.count_nonzero(noisy_c) + np.count_nonzero(reference_c)
        per_class[value] = float(2.0 * np.count_nonzero(noisy_c & reference_c) / total) if total else 1.0
        if total:
            present.append(per_class[value])
    return (math.fsum(present) / len(present) if present else 1.0), per_class


def _class_case(
    labels: np.ndarray, case_id: str, *, seed: int, level: str, value: int, model: NoiseModel
) -> Any:
    """The model's case for the binary mask of class ``value`` of one [S, H, W] label map."""
    stack = model.stack((labels == value).astype(np.uint8))
    return model.case(stack, seed, case_id, level, value)


def calibrate_label_levels(
    masks: Mapping[str, np.ndarray], seed: int, num_labels: int, *, model: NoiseModel = RELATIVE
) -> dict[str, LabelCalibration]:
    """Strengths per level and class for the train label maps ``{case id: [S, H, W] uint8 0..K-1}``."""
    ids = sorted(masks)
    result = {}
    for level in LEVELS:
        covered = {case_id: np.zeros(masks[case_id].shape, dtype=bool) for case_id in ids}
        strengths, class_dice = {}, {}
        for value in range(num_labels - 1, 0, -1):
            cases = [_class_case(masks[i], i, seed=seed, level=level, value=value, model=model) for i in ids]
            blocked = [model.crop(case, covered[i]) for i, case in zip(ids, cases, strict=True)]
            strengths[value], class_dice[value] = calibrate_strength(
                cases, TARGET_DICE[level], blocked, model=model
            )
            for case_id, case in zip(ids, cases, strict=True):
                covered[case_id] |= model.noisy(case, strengths[value]).astype(bool)
        result[level] = LabelCalibration(
            level, TARGET_DICE[level], dict(sorted(strengths.items())), dict(sorted(class_dice.items()))
        )
    return result


def noisy_label_map(
    labels: np.ndarray,
    case_id: str,
    seed: int,
    level: str,
    strengths: Mapping[int, float],
    *,
    model: NoiseModel = RELATIVE,
) -> np.ndarray:
    """The composed noisy [S, H, W] uint8 label map of one case at one level (higher class wins)."""
    noisy = np.zeros(labels.shape, dtype=np.uint8)
    for value in sorted(strengths):
        case = _class_case(labels, case_id, seed=seed, level=level, value=value, model=model)
        noisy[model.noisy(case, strengths[value]).astype(bool)] = value
    return noisy


def noisy_label_levels(
    labels: np.ndarray,
    case_id: str,
    seed: int,
    strengths: Mapping[str, Mapping[int, float]],
    *,
    model: NoiseModel = RELATIVE,
) -> tuple[dict[str, np.ndarray], dict[str, float], dict[str, dict[int, float]]]:
    """Noisy maps of one case per level, their mean foreground Dice and their Dice per class.

    Args:
        labels: [S, H, W] uint8 reference label values 0..K-1.
        case_id: The case's id (its seed stream).
        seed: The dataset's noise seed.
        strengths: ``{level: {class value: s}}`` from :func:`calibrate_label_levels`.
        model: The noise model the strengths were calibrated for.
    """
    num_labels = max(len(per_class) for per_class in strengths.values()) + 1
    maps, means, per_class = {}, {}, {}
    for level, level_strengths in strengths.items():
        maps[level] = noisy_label_map(labels, case_id, seed, level, level_strengths, model=model)
        means[level], per_class[level] = foreground_dice(maps[level], labels, num_labels)
    return maps, means, per_class
