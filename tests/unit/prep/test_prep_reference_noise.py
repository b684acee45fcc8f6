"""The published noise operations (`--noise-model reference`): each operation by hand, draws, calibration."""

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from mlbseg.prep import noise
from mlbseg.prep.calibrate import calibrate_levels, noisy_levels
from mlbseg.prep.noise import TARGET_DICE, inscribed_ellipses
from mlbseg.prep.noise_models import REFERENCE, RELATIVE
from mlbseg.prep.reference_noise import (
    ANGLE_LIMIT_DEG,
    KERNEL_TABLES,
    ReferenceDraws,
    chessboard_distance,
    corrupt_reference,
    draw_reference_noise,
    half_sides,
    reference_case,
    reference_dice,
    reference_noisy_mask,
    reference_stack,
    rotate_masks,
)

from ._helpers import phantom_family


def _draws(num, *, angle=0.0, dilate=True, side=7.0, rounding=0.0, ellipse=False):
    """Hand-made draws: the same values for every one of ``num`` slices."""
    return ReferenceDraws(
        angle=np.full(num, angle),
        dilate=np.full(num, dilate),
        side=np.full(num, side),
        rounding=np.full(num, rounding),
        ellipse=np.full(num, ellipse),
    )


def _square(size, rows, cols, num=1):
    mask = np.zeros((num, size, size), np.uint8)
    mask[:, rows, cols] = 1
    return mask


@pytest.mark.parametrize("size", [9, 10])
def test_rotation_turns_the_slice_about_the_image_centre(size):
    rng = np.random.default_rng(0)
    masks = rng.random((3, size, size)) < 0.3
    np.testing.assert_array_equal(rotate_masks(masks, np.zeros(3)), masks)
    quarter = rotate_masks(masks, np.full(3, np.pi / 2))
    np.testing.assert_array_equal(quarter, np.rot90(masks, k=-1, axes=(1, 2)))
    half = rotate_masks(masks, np.full(3, np.pi))
    np.testing.assert_array_equal(half, masks[:, ::-1, ::-1])
    rows, cols = np.mgrid[0:41, 0:41]
    disk = (np.hypot(rows - 20, cols - 30) <= 3)[None]  # 10 px right of the centre (20, 20)
    turned = np.argwhere(rotate_masks(disk, np.array([np.deg2rad(20.0)]))[0]).mean(axis=0)
    expected = 20 + 10 * np.array([np.sin(np.deg2rad(20.0)), np.cos(np.deg2rad(20.0))])
    np.testing.assert_allclose(turned, expected, atol=0.3)  # same radius about the image centre
    corner = np.zeros((1, 9, 9), bool)
    corner[0, 0, 0] = True
    assert not rotate_masks(corner, np.array([np.pi / 4]))[0].any()  # turned off the canvas: gone


def test_a_case_holds_its_slices_rotated_by_their_drawn_angles():
    mask = phantom_family(1, 64)["Case00"]
    stack = reference_stack(mask)
    draws = draw_reference_noise(0, "Case00", "L1", mask.shape[0])
    draws = dataclasses.replace(draws, ellipse=np.zeros(mask.shape[0], bool))
    expected = np.zeros(mask.shape, np.uint8)
    expected[stack.slices] = rotate_masks(stack.clean, draws.angle[stack.slices])
    assert not np.array_equal(expected, mask)
    np.testing.assert_array_equal(reference_noisy_mask(reference_case(stack, draws), 0.0), expected)


def test_square_erosion_and_dilation_are_exact_chessboard_thresholds():
    rng = np.random.default_rng(1)
    masks = ndimage.binary_opening(rng.random((4, 30, 30)) < 0.55, np.ones((1, 3, 3)))
    masks[3, 0:6, 0:10] = True  # touches the border: outside the slice counts as background
    distance = chessboard_distance(masks)
    for half in range(5):
        square = np.ones((2 * half + 1, 2 * half + 1), bool)
        dilated = [ndimage.binary_dilation(m, square) for m in masks]
        eroded = [ndimage.binary_erosion(m, square, border_value=0) for m in masks]
        np.testing.assert_array_equal(distance <= half, dilated)
        np.testing.assert_array_equal(distance <= -half, eroded)


def test_kernel_sides_are_odd_with_the_scaled_side_as_expectation():
    full = _square(512, slice(200, 300), slice(200, 300))
    assert reference_case(reference_stack(full), _draws(1, side=21.0)).side[0] == 21.0  # the published grid
    quarter = reference_case(reference_stack(full[:, ::4, ::4]), _draws(1, side=21.0))
    assert quarter.side[0] == pytest.approx(21.0 / 4)  # 128²: a quarter of the side
    num = 2000
    mask = _square(16, slice(4, 12), slice(4, 12), num=num)
    draws = ReferenceDraws(
        angle=np.zeros(num),
        dilate=np.ones(num, bool),
        side=np.full(num, 21.0 * 512 / 16),  # 21 px at 16²
        rounding=np.random.default_rng(2).random(num),
        ellipse=np.zeros(num, bool),
    )
    many = reference_case(reference_stack(mask), draws)
    np.testing.assert_array_equal(2 * half_sides(many, 1.0) + 1, 21)  # an odd side stays as it is
    for scale in (0.6, 1.37, 2.2):
        sides = 2 * half_sides(many, scale) + 1
        assert set(np.unique(sides) % 2) == {1}
        assert len(np.unique(sides)) == 2  # the two odd sides around the real one
        assert sides.mean() == pytest.approx(21.0 * scale, abs=0.1)


def test_erosion_or_dilation_by_the_drawn_square_on_a_hand_made_mask():
    mask = _square(64, slice(20, 40), slice(24, 36))  # 20 x 12 px at 64², an eighth of 512²
    dilated = reference_noisy_mask(reference_case(reference_stack(mask), _draws(1, side=7.0 * 8)), 1.0)
    np.testing.assert_array_equal(dilated, _square(64, slice(17, 43), slice(21, 39)))  # side 7 at 64²
    eroded = reference_noisy_mask(
        reference_case(reference_stack(mask), _draws(1, dilate=False, side=5.0 * 8)), 1.0
    )
    np.testing.assert_array_equal(eroded, _square(64, slice(22, 38), slice(26, 34)))
    twice = reference_noisy_mask(reference_case(reference_stack(mask), _draws(1, side=7.0 * 8)), 2.0)
    np.testing.assert_array_equal(twice, _square(64, slice(14, 46), slice(18, 42)))  # scale 2: side 13
    untouched = reference_case(reference_stack(mask), _draws(1, side=56.0))
    np.testing.assert_array_equal(reference_noisy_mask(untouched, 0.0), mask)
    assert reference_dice(untouched, 0.0) == 1.0


def test_ellipse_replacement_when_drawn_and_over_the_area_limit():
    mask = _square(64, slice(20, 40), slice(24, 36))
    stack = reference_stack(mask)
    ellipse = reference_noisy_mask(reference_case(stack, _draws(1, ellipse=True)), 0.0)
    np.testing.assert_array_equal(ellipse, inscribed_ellipses(mask.astype(bool)))
    assert ellipse.sum() < mask.sum()
    grown = reference_noisy_mask(reference_case(stack, _draws(1, ellipse=True, side=56.0)), 1.0)
    np.testing.assert_array_equal(grown, inscribed_ellipses(_square(64, slice(17, 43), slice(21, 39)) == 1))
    # eroded to the area limit (300 px at 512² = 4.69 px at 64²) or below: no ellipse, as published
    corner = np.zeros((1, 64, 64), np.uint8)
    corner[0, 20:23, 20:24] = corner[0, 20:24, 20:23] = 1  # an L, eroded by the 3 x 3 square to 3 px
    expected = ndimage.binary_erosion(corner[0], np.ones((3, 3)))
    assert 0 < expected.sum() <= 4
    assert not np.array_equal(inscribed_ellipses(expected[None])[0], expected)
    case = reference_case(reference_stack(corner), _draws(1, dilate=False, ellipse=True, side=24.0))
    np.testing.assert_array_equal(reference_noisy_mask(case, 1.0)[0], expected)


def test_slices_at_or_under_the_area_limit_are_lost():
    mask = np.zeros((3, 64, 64), np.uint8)  # the limit at 64² is 300 · 64² / 512² = 4.69 px
    mask[0, 10, 10:14] = 1  # 4 px: lost
    mask[1, 10, 10:15] = 1  # 5 px: kept
    mask[2, 20:30, 20:30] = 1
    stack = reference_stack(mask)
    assert stack.limit == pytest.approx(300 / 64)
    np.testing.assert_array_equal(stack.slices, [1, 2])
    case = reference_case(stack, _draws(3))
    noisy = reference_noisy_mask(case, 0.0)
    assert not noisy[0].any()
    np.testing.assert_array_equal(noisy[1:], mask[1:])
    assert reference_dice(case, 0.0) == pytest.approx(2 * 105 / (105 + 109))
    nothing = reference_stack(mask[:1])
    lost = reference_case(nothing, _draws(1))
    assert not reference_noisy_mask(lost, 1.0).any()
    assert reference_dice(lost, 1.0) == 0.0
    empty = reference_case(reference_stack(np.zeros((2, 16, 16), np.uint8)), _draws(2))
    assert reference_dice(empty, 1.0) == 1.0
    assert not REFERENCE.has_foreground(empty)


@pytest.mark.parametrize("level", list(KERNEL_TABLES))
def test_draws_follow_the_published_tables(level):
    num = 200_000
    draws = draw_reference_noise(0, "Case00", level, num)
    sides, cumulative = KERNEL_TABLES[level]
    expected = np.diff([0.0, *cumulative])
    found = np.array([np.mean(draws.side == side) for side in sides])
    assert found.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(found, expected, atol=4 * np.sqrt(0.25 / num))
    assert np.abs(np.rad2deg(draws.angle)).max() <= ANGLE_LIMIT_DEG
    quartiles = np.quantile(np.rad2deg(draws.angle), [0.25, 0.5, 0.75])
    np.testing.assert_allclose(quartiles, [-10.0, 0.0, 10.0], atol=0.3)  # uniform in ±20°
    assert draws.dilate.mean() == pytest.approx(0.5, abs=0.005)
    assert draws.ellipse.mean() == pytest.approx(0.5, abs=0.005)


def test_draws_are_seeded_per_seed_level_case_and_class_apart_from_the_relative_stream():
    first = draw_reference_noise(5, "Case07", "L2", 40)
    again = draw_reference_noise(5, "Case07", "L2", 40)
    assert all(np.array_equal(getattr(first, k), getattr(again, k)) for k in ("angle", "side", "rounding"))
    for other in (
        draw_reference_noise(6, "Case07", "L2", 40),
        draw_reference_noise(5, "Case08", "L2", 40),
        draw_reference_noise(5, "Case07", "L1", 40),
        draw_reference_noise(5, "Case07", "L2", 40, label=1),
    ):
        assert not np.array_equal(first.angle, other.angle)
    relative = noise.draw_noise(5, "Case07", "L2", 40)
    assert not np.allclose(np.abs(first.angle), np.abs(relative.angle))


@pytest.mark.parametrize("size", [64, 144])
def test_calibration_hits_every_target_on_phantoms(size):
    masks = phantom_family(10, size)
    calibration = calibrate_levels(masks, seed=0, model=REFERENCE)
    scales = {level: result.strength for level, result in calibration.items()}
    realised = [noisy_levels(mask, i, 0, scales, model=REFERENCE) for i, mask in masks.items()]
    for level, target in TARGET_DICE.items():
        mean = np.mean([dice[level] for _, dice in realised])
        assert calibration[level].mean_dice == pytest.approx(mean, abs=1e-12)
        assert abs(mean - target) <= 0.02, (level, mean)
        assert 0 < scales[level] < REFERENCE.max_strength
    first = realised[0][0]["L2"]
    assert first.dtype == np.uint8
    assert set(np.unique(first)) <= {0, 1}
    np.testing.assert_array_equal(
        noisy_levels(masks["Case00"], "Case00", 0, scales, model=REFERENCE)[0]["L2"], first
    )
    relative = noisy_levels(masks["Case00"], "Case00", 0, scales, model=RELATIVE)[0]["L2"]
    assert not np.array_equal(relative, first)


def test_corruption_only_grows_with_the_scale_per_slice():
    mask = phantom_family(1, 64)["Case00"]
    stack = reference_stack(mask)
    dilate = reference_case(stack, _draws(mask.shape[0], side=40.0))
    erode = reference_case(stack, _draws(mask.shape[0], dilate=False, side=40.0))
    previous = None
    for scale in np.linspace(0, 2, 9):
        grown, shrunk = corrupt_reference(dilate, scale), corrupt_reference(erode, scale)
        if previous is not None:
            assert (grown >= previous[0]).all()
            assert (shrunk <= previous[1]).all()
        previous = (grown, shrunk)
