import numpy as np
import pytest
import torch

from mlbseg.evaluation.resample import probabilities_to_original


def test_numpy_in_numpy_out_with_the_original_size():
    probs = np.random.default_rng(0).random((3, 144, 144))
    out = probabilities_to_original(probs, (320, 256))
    assert isinstance(out, np.ndarray)
    assert out.shape == (3, 320, 256)
    assert out.dtype == np.float32
    assert out.min() >= 0.0
    assert out.max() <= 1.0


def test_tensor_in_tensor_out_on_the_same_device():
    probs = torch.rand(2, 144, 144, dtype=torch.float64)
    out = probabilities_to_original(probs, (200, 200))
    assert isinstance(out, torch.Tensor)
    assert out.shape == (2, 200, 200)
    assert out.device == probs.device
    assert out.dtype == torch.float32


def test_constant_probabilities_stay_constant():
    out = probabilities_to_original(np.full((2, 144, 144), 0.3, np.float32), (512, 384))
    np.testing.assert_allclose(out, 0.3, atol=1e-6)


def test_pixel_centres_map_to_pixel_centres():
    # A field linear in the normalised pixel-centre coordinate u = (j + 0.5) / w must come back as the same
    # linear field at the original pixel centres (i + 0.5) / W: the half-pixel (align_corners=False) rule.
    small, big = 144, 512
    u_small = (np.arange(small) + 0.5) / small
    probs = np.broadcast_to(u_small, (1, small, small)).copy()
    out = probabilities_to_original(probs, (big, big))
    u_big = (np.arange(big) + 0.5) / big
    interior = (u_big > u_small[0]) & (u_big < u_small[-1])
    np.testing.assert_allclose(out[0, 7][interior], u_big[interior], atol=1e-5)
    np.testing.assert_allclose(
        out[0][:, interior], np.broadcast_to(u_big[interior], (big, interior.sum())), atol=1e-5
    )


def test_slice_axis_is_not_resampled():
    probs = np.zeros((4, 144, 144), np.float32)
    probs[2] = 1.0
    out = probabilities_to_original(probs, (300, 300))
    np.testing.assert_array_equal(out.max(axis=(1, 2)), [0.0, 0.0, 1.0, 0.0])


def test_rejects_non_stack_input():
    with pytest.raises(ValueError, match=r"\[S, h, w\]"):
        probabilities_to_original(np.zeros((144, 144)), (320, 320))
