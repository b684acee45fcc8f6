"""The two synthetic noise models ``prepare --noise-model`` offers, behind one interface for calibration.

- ``relative`` (the default, :mod:`mlbseg.prep.noise`): the paper's operation families sized to each
  slice's own structure, one strength s ∈ [0, 1] per level;
- ``reference`` (:mod:`mlbseg.prep.reference_noise`): the published script's operations and kernel
  tables carried to the slice grid, one kernel scale c ∈ [0, 4] per level.

Each model turns a [S, H, W] 0/1 mask into a level-independent *stack*, attaches one (seed, case, level,
class) draw to it as a *case*, and scores or writes that case at any knob value; the knob only ever
strengthens every operation, so :mod:`mlbseg.prep.calibrate` bisects it the same way for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlbseg.errors import UserError
from mlbseg.prep import noise, reference_noise


@dataclass(frozen=True)
class NoiseModel:
    """One noise model: how to build a case and what to do with it at a knob value.

    Attributes:
        name: ``relative`` or ``reference`` (the manifest's ``noise_model``).
        max_strength: The largest knob value calibration tries (the smallest is 0).
        stack: [S, H, W] uint8 0/1 mask -> its level-independent part.
        case: (stack, seed, case id, level, class or None) -> the case with its draws.
        dice: (case, knob, blocked [K, h, w] bool or None) -> per-volume Dice, noisy vs clean.
        noisy: (case, knob) -> the full [S, H, W] uint8 0/1 noisy mask.
        crop: (case, full [S, H, W] bool) -> its [K, h, w] part in the case's crop (``blocked``).
        has_foreground: case -> whether its reference mask holds any foreground.
    """

    name: str
    max_strength: float
    stack: Callable[[np.ndarray], Any]
    case: Callable[[Any, int, str, str, int | None], Any]
    dice: Callable[[Any, float, np.ndarray | None], float]
    noisy: Callable[[Any, float], np.ndarray]
    crop: Callable[[Any, np.ndarray], np.ndarray]
    has_foreground: Callable[[Any], bool]


def _relative_case(
    stack: noise.SliceStack, seed: int, case_id: str, level: str, label: int | None
) -> noise.NoiseCase:
    return noise.noise_case(stack, noise.draw_noise(seed, case_id, level, stack.shape[0], label))


def _relative_crop(case: noise.NoiseCase, full: np.ndarray) -> np.ndarray:
    return full[case.stack.slices][:, case.stack.box[0], case.stack.box[1]]


def _reference_case(
    stack: reference_noise.ReferenceStack, seed: int, case_id: str, level: str, label: int | None
) -> reference_noise.ReferenceCase:
    draws = reference_noise.draw_reference_noise(seed, case_id, level, stack.shape[0], label)
    return reference_noise.reference_case(stack, draws)


def _reference_crop(case: reference_noise.ReferenceCase, full: np.ndarray) -> np.ndarray:
    return full[case.stack.slices][:, case.box[0], case.box[1]]


RELATIVE = NoiseModel(
    name="relative",
    max_strength=1.0,
    stack=noise.slice_stack,
    case=_relative_case,
    dice=noise.case_dice,
    noisy=noise.noisy_mask,
    crop=_relative_crop,
    has_foreground=lambda case: bool(case.stack.slices.size),
)
REFERENCE = NoiseModel(
    name="reference",
    max_strength=reference_noise.MAX_SCALE,
    stack=reference_noise.reference_stack,
    case=_reference_case,
    dice=reference_noise.reference_dice,
    noisy=reference_noise.reference_noisy_mask,
    crop=_reference_crop,
    has_foreground=lambda case: bool(case.stack.total),
)
NOISE_MODELS = {model.name: model for model in (RELATIVE, REFERENCE)}
DEFAULT_NOISE_MODEL = RELATIVE.name


def noise_model_by_name(name: str) -> NoiseModel:
    """The model called ``name``; UserError naming ``--noise-model`` and the choices otherwise."""
    if name not in NOISE_MODELS:
        raise UserError(f"--noise-model {name}: choose one of {', '.join(NOISE_MODELS)}")
    return NOISE_MODELS[name]
