"""Noisy label maps for K > 2: per-structure noise, the overlap rule, and per-class calibration."""

import numpy as np
import pytest
from scipy import ndimage

from mlbseg.prep.label_noise import (
    calibrate_label_levels,
    foreground_dice,
    noisy_label_levels,
    noisy_label_map,
)
from mlbseg.prep.noise import TARGET_DICE, draw_noise, noise_case, noisy_mask, slice_stack
from mlbseg.prep.noise_models import REFERENCE, RELATIVE
from mlbseg.prep.phantom import make_phantom
from mlbseg.prep.resize import resize_mask


def zones_family(count, size):
    """Phantom glands resized like prepare does, split into a peripheral shell (1) and a core (2)."""
    rng = np.random.default_rng(5)
    maps = {}
    for index in range(count):
        gland = resize_mask(make_phantom(rng, (48, 96), (10, 20)).mask, size)
        core = ndimage.binary_erosion(gland, np.ones((1, 5, 5), bool))
        maps[f"Case{index:02d}"] = (gland + core).astype(np.uint8)
    return maps


@pytest.mark.parametrize("model", [RELATIVE, REFERENCE], ids=lambda model: model.name)
def test_mean_over_classes_hits_every_target_and_each_class_does_too(model):
    maps = zones_family(10, 64)
    calibration = calibrate_label_levels(maps, seed=0, num_labels=3, model=model)
    strengths = {level: result.strengths for level, result in calibration.items()}
    realised = [
        noisy_label_levels(labels, case_id, 0, strengths, model=model) for case_id, labels in maps.items()
    ]
    for level, target in TARGET_DICE.items():
        mean = np.mean([means[level] for _, means, _ in realised])
        assert abs(mean - target) <= 0.02, (level, mean)
        for value in (1, 2):
            per_class = np.mean([classes[level][value] for _, _, classes in realised])
            assert per_class == pytest.approx(calibration[level].class_dice[value], abs=1e-9)
            assert abs(per_class - target) <= 0.02, (level, value, per_class)
    assert set(calibration["L1"].strengths) == {1, 2}


def test_higher_class_wins_and_only_dataset_labels_appear():
    labels = zones_family(1, 48)["Case00"]
    strengths = {1: 0.6, 2: 0.6}
    noisy = noisy_label_map(labels, "Case00", 3, "L1", strengths)
    assert set(np.unique(noisy)) <= {0, 1, 2}
    own = {}
    for value in (1, 2):
        stack = slice_stack((labels == value).astype(np.uint8))
        own[value] = noisy_mask(noise_case(stack, draw_noise(3, "Case00", "L1", stack.shape[0], value)), 0.6)
    np.testing.assert_array_equal(noisy == 2, own[2] == 1)
    np.testing.assert_array_equal(noisy == 1, (own[1] == 1) & (own[2] == 0))
    assert ((own[1] == 1) & (own[2] == 1)).any()  # the rule was exercised
    np.testing.assert_array_equal(noisy_label_map(labels, "Case00", 3, "L1", {1: 0.0, 2: 0.0}), labels)


def test_each_class_has_its_own_seeded_stream():
    first, second = draw_noise(0, "Case00", "L2", 9, 1), draw_noise(0, "Case00", "L2", 9, 2)
    assert not np.array_equal(first.angle, second.angle)
    np.testing.assert_array_equal(
        draw_noise(0, "Case00", "L2", 9).angle, draw_noise(0, "Case00", "L2", 9).angle
    )
    assert not np.array_equal(draw_noise(0, "Case00", "L2", 9).angle, first.angle)


def test_foreground_dice_by_hand():
    reference = np.array([[[0, 1, 1, 2, 2, 2]]], np.uint8)
    noisy = np.array([[[1, 1, 0, 2, 2, 0]]], np.uint8)
    mean, per_class = foreground_dice(noisy, reference, 3)
    assert per_class == {1: pytest.approx(0.5), 2: pytest.approx(0.8)}
    assert mean == pytest.approx(0.65)
    assert foreground_dice(reference * 0, reference * 0, 3) == (1.0, {1: 1.0, 2: 1.0})


def test_reference_model_per_structure_keeps_the_higher_class_and_its_own_streams():
    labels = zones_family(1, 64)["Case00"]
    strengths = {1: 1.2, 2: 1.2}
    noisy = noisy_label_map(labels, "Case00", 3, "L2", strengths, model=REFERENCE)
    assert set(np.unique(noisy)) <= {0, 1, 2}
    own = {}
    for value in (1, 2):
        stack = REFERENCE.stack((labels == value).astype(np.uint8))
        own[value] = REFERENCE.noisy(REFERENCE.case(stack, 3, "Case00", "L2", value), 1.2)
    np.testing.assert_array_equal(noisy == 2, own[2] == 1)
    np.testing.assert_array_equal(noisy == 1, (own[1] == 1) & (own[2] == 0))
    relative = noisy_label_map(labels, "Case00", 3, "L2", {1: 0.3, 2: 0.3})
    assert not np.array_equal(noisy, relative)
