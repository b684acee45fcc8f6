"""Intensity normalisation (robust, never NaN) and slice resizing (antialiased, mask area preserved)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mlbseg.prep.convert import volume_to_slices
from mlbseg.prep.normalize import apply_window, intensity_window
from mlbseg.prep.resize import resampling_matrix, resize_mask, resize_slices


def test_window_ignores_outliers():
    volume = np.random.default_rng(0).normal(500, 50, (10, 40, 40)).astype(np.int16)
    volume[0, 0, :5] = 32000  # coil hot spot
    volume[1, 1, :5] = -5000
    low, high = intensity_window(volume)
    assert 300 < low < 400
    assert 600 < high < 700
    scaled = apply_window(volume, (low, high))
    assert scaled.dtype == np.float32
    assert scaled.min() == 0.0
    assert scaled.max() == 1.0
    assert 0.45 < float(np.median(scaled)) < 0.55


@pytest.mark.parametrize("value", [0, 7, -3000])
def test_constant_volume_and_constant_slices_give_no_nan(value):
    constant = np.full((4, 8, 8), value, dtype=np.int16)
    slices, window = volume_to_slices(constant, 16)
    assert window == (value, value)
    assert np.array_equal(slices, np.zeros((4, 16, 16), np.float32))
    mixed = np.random.default_rng(1).normal(0, 1, (4, 8, 8)).astype(np.float32)
    mixed[2] = 5.0  # one constant slice in a normal volume
    slices, _ = volume_to_slices(mixed, 16)
    assert np.isfinite(slices).all()
    assert slices.min() >= 0
    assert slices.max() <= 1
    assert np.ptp(slices[2]) == 0


def test_resampling_matrix_rows_are_normalised_and_centre_aligned():
    for n_in, n_out in [(512, 144), (144, 512), (100, 100), (70, 30)]:
        weights = resampling_matrix(n_in, n_out)
        assert weights.shape == (n_out, n_in)
        assert (weights >= 0).all()
        np.testing.assert_allclose(weights.sum(axis=1), 1.0)
        centre_of_mass = weights @ (np.arange(n_in) + 0.5)
        interior = slice(n_out // 4, 3 * n_out // 4)  # away from the clamped edges
        expected = ((np.arange(n_out) + 0.5) * n_in / n_out)[interior]
        np.testing.assert_allclose(
            centre_of_mass[interior], expected, atol=0.05
        )  # sampled triangle: tiny skew
    np.testing.assert_array_equal(resampling_matrix(9, 9), np.eye(9))


@pytest.mark.parametrize("size", [(144, 144), (37, 60), (300, 250)])
def test_resize_matches_torch_antialiased_bilinear(size):
    stack = np.random.default_rng(2).random((3, 120, 96)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(stack)[:, None], size=size, mode="bilinear", antialias=True)
    np.testing.assert_allclose(resize_slices(stack, size), expected[:, 0].numpy(), atol=1e-5)


def _ellipses(shape, seed):
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[1], 0 : shape[2]]
    masks = np.zeros(shape, dtype=np.uint8)
    for k in range(shape[0]):
        cy, cx = rng.uniform(0.35, 0.65, 2) * shape[1:]
        ry, rx = rng.uniform(0.08, 0.3, 2) * shape[1:]
        angle = rng.uniform(0, np.pi)
        u = (cols - cx) * np.cos(angle) + (rows - cy) * np.sin(angle)
        v = -(cols - cx) * np.sin(angle) + (rows - cy) * np.cos(angle)
        masks[k] = (u / rx) ** 2 + (v / ry) ** 2 <= 1
    return masks


@pytest.mark.parametrize(("source", "size"), [((8, 512, 512), 144), ((8, 320, 256), 144), ((8, 64, 64), 144)])
def test_resized_masks_keep_their_area_and_position(source, size):
    masks = _ellipses(source, seed=3)
    small = resize_mask(masks, size)
    assert small.dtype == np.uint8
    assert set(np.unique(small)) <= {0, 1}
    scale = (size * size) / (source[1] * source[2])
    area_in, area_out = masks.sum(axis=(1, 2)) * scale, small.sum(axis=(1, 2))
    np.testing.assert_allclose(area_out, area_in, rtol=0.03)
    for k in range(source[0]):  # centroid in output pixel units: no half-pixel shift
        rows_in, cols_in = np.nonzero(masks[k])
        rows_out, cols_out = np.nonzero(small[k])
        assert abs((rows_out.mean() + 0.5) - (rows_in.mean() + 0.5) * size / source[1]) < 0.25
        assert abs((cols_out.mean() + 0.5) - (cols_in.mean() + 0.5) * size / source[2]) < 0.25
