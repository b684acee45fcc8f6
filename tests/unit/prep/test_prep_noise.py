"""Noise operations, common random numbers, and calibration to the paper's Dice on two shape families."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from mlbseg.prep.calibrate import calibrate_levels, mean_dice, noisy_levels
from mlbseg.prep.noise import (
    TARGET_DICE,
    case_dice,
    draw_noise,
    inscribed_ellipses,
    noise_case,
    noisy_mask,
    rotate_slices,
    signed_distance,
    slice_stack,
)

from ._helpers import phantom_family


def other_family(count, size):
    """Not prostate-like: tilted thin ellipses, crescents, rectangles, two-blob slices, off-centre."""
    rng = np.random.default_rng(11)
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    masks = {}
    for index in range(count):
        num = int(rng.integers(8, 30))
        mask = np.zeros((num, size, size), np.uint8)
        cy, cx = rng.uniform(0.3, 0.7, 2) * size
        base, angle = rng.uniform(0.06, 0.3) * size, rng.uniform(0, np.pi)
        u = (cols - cx) * np.cos(angle) + (rows - cy) * np.sin(angle)
        v = -(cols - cx) * np.sin(angle) + (rows - cy) * np.cos(angle)
        for k in range(2, num - 2):
            r = base * (0.4 + 0.6 * np.sin(np.pi * (k - 1) / (num - 3)))
            shape = [
                (u / (1.8 * r)) ** 2 + (v / (0.5 * r)) ** 2 <= 1,
                (np.hypot(u, v) <= r) & (np.hypot(u - 0.6 * r, v) > 0.8 * r),
                (np.abs(u) <= 1.2 * r) & (np.abs(v) <= 0.7 * r),
                (np.hypot(u - 0.7 * r, v) <= 0.6 * r) | (np.hypot(u + 0.7 * r, v) <= 0.5 * r),
            ][index % 4]
            mask[k] = shape
        masks[f"X{index:02d}"] = mask
    return masks


@pytest.mark.parametrize("family", [phantom_family, other_family])
@pytest.mark.parametrize("size", [64, 144])
def test_calibration_hits_every_target_on_both_shape_families(family, size):
    masks = family(12, size)
    calibration = calibrate_levels(masks, seed=0)
    strengths = {name: result.strength for name, result in calibration.items()}
    dice = [noisy_levels(mask, case_id, 0, strengths)[1] for case_id, mask in masks.items()]
    for level, target in TARGET_DICE.items():
        realised = np.mean([case[level] for case in dice])
        assert calibration[level].mean_dice == pytest.approx(realised, abs=1e-12)
        assert abs(realised - target) <= 0.02, (level, realised)
    assert calibration["L1"].strength > calibration["L2"].strength > calibration["L3"].strength > 0


def test_zero_strength_is_the_clean_mask_and_mean_dice_falls_with_strength():
    masks = other_family(6, 64)
    cases = [
        noise_case(slice_stack(m), draw_noise(3, case_id, "L2", m.shape[0])) for case_id, m in masks.items()
    ]
    for case, mask in zip(cases, masks.values(), strict=True):
        np.testing.assert_array_equal(noisy_mask(case, 0.0), mask)
    curve = [mean_dice(cases, s) for s in np.linspace(0, 1, 11)]
    assert curve[0] == 1.0
    assert curve[-1] < 0.3
    assert all(later <= earlier + 0.01 for earlier, later in itertools.pairwise(curve))


def test_noise_is_seeded_per_case_and_level_only():
    mask = phantom_family(1, 64)["Case00"]
    first, dice = noisy_levels(mask, "Case07", 5, {"L1": 0.5, "L3": 0.2})
    again, dice_again = noisy_levels(mask, "Case07", 5, {"L3": 0.2, "L1": 0.5})
    assert dice == dice_again
    assert all(np.array_equal(first[k], again[k]) for k in first)
    other_case, _ = noisy_levels(mask, "Case08", 5, {"L1": 0.5})
    other_seed, _ = noisy_levels(mask, "Case07", 6, {"L1": 0.5})
    assert not np.array_equal(first["L1"], other_case["L1"])
    assert not np.array_equal(first["L1"], other_seed["L1"])
    same_l1 = draw_noise(5, "Case07", "L1", 9)
    assert not np.array_equal(same_l1.magnitude, draw_noise(5, "Case07", "L2", 9).magnitude)
    assert first["L1"].dtype == np.uint8
    assert first["L1"].shape == mask.shape


def test_empty_mask_stays_empty_with_dice_one():
    masks, dice = noisy_levels(np.zeros((4, 16, 16), np.uint8), "Case00", 0, {"L1": 1.0})
    assert not masks["L1"].any()
    assert dice == {"L1": 1.0}


def test_signed_distance_thresholds_are_exact_disk_dilations_and_erosions():
    mask = np.zeros((2, 41, 41), bool)
    rows, cols = np.mgrid[0:41, 0:41]
    mask[0] = np.hypot(rows - 20, cols - 17) <= 10
    mask[1, 5:30, 10:14] = True
    mask[1, 0:8, 30:41] = True  # touches the border: outside the slice counts as background
    sdf = signed_distance(mask)
    np.testing.assert_array_equal(sdf <= 0, mask)
    offsets = np.mgrid[-9:10, -9:10]
    for t in (2.0, 3.7, 6.0):
        dilated = [ndimage.binary_dilation(m, np.hypot(*offsets) <= t + 0.5) for m in mask]
        eroded = [ndimage.binary_erosion(m, np.hypot(*offsets) < t + 0.5, border_value=0) for m in mask]
        np.testing.assert_array_equal(sdf <= t, dilated)
        np.testing.assert_array_equal(sdf <= -t, eroded)


def test_rotation_and_ellipse_helpers():
    field = np.random.default_rng(0).random((2, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(rotate_slices(field, np.zeros(2), (4.0, 4.0)), field, atol=1e-6)
    quarter = rotate_slices(field, np.full(2, np.pi / 2), (4.0, 4.0))
    np.testing.assert_allclose(quarter, np.rot90(field, k=-1, axes=(1, 2)), atol=1e-5)
    thin = np.zeros((3, 8, 8), bool)
    thin[0, 2, 1:7] = True  # one row high: ry = 0.5, no division by zero
    thin[1, 3, 3] = True
    ellipses = inscribed_ellipses(thin)
    np.testing.assert_array_equal(ellipses[0], thin[0])
    np.testing.assert_array_equal(ellipses[1], thin[1])
    assert not ellipses[2].any()


def test_case_dice_on_a_hand_made_case():
    mask = np.zeros((3, 32, 32), np.uint8)
    mask[1, 8:24, 8:24] = 1
    case = noise_case(slice_stack(mask), draw_noise(0, "c", "L1", 3))
    assert case_dice(case, 0.0) == 1.0
    noisy = noisy_mask(case, 0.6)
    expected = 2 * (noisy & mask).sum() / (noisy.sum() + mask.sum())
    assert case_dice(case, 0.6) == pytest.approx(expected)
    assert expected < 1.0
    assert not noisy[[0, 2]].any()  # noise never invents foreground in empty slices
