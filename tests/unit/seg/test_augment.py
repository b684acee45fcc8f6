"""Dataset-level flip + rotation on the device: identity, exact flips, binary masks, reproducibility."""

from __future__ import annotations

import torch

from mlbseg.seg.augment import random_flip_rotate


def _batch(batch: int = 4, height: int = 24, width: int = 36):
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 2, height, width, generator=generator)
    y, x = torch.meshgrid(
        torch.arange(height) - (height - 1) / 2, torch.arange(width) - (width - 1) / 2, indexing="ij"
    )
    disc = (x**2 + y**2 < 8**2).float().expand(batch, 1, height, width).clone()
    noisy = (torch.rand(batch, 1, height, width, generator=generator) > 0.5).to(torch.uint8)
    return images, disc, noisy


def test_no_rotation_no_flip_is_identity():
    images, disc, noisy = _batch()
    out, (out_disc, out_noisy) = random_flip_rotate(
        images, (disc, noisy), torch.Generator(), max_degrees=0.0, flip_prob=0.0
    )
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)  # float rounding of the pixel centres
    assert torch.equal(out_disc, disc)
    assert torch.equal(out_noisy, noisy)
    assert out_noisy.dtype == torch.uint8


def test_flip_only_is_torch_flip():
    images, _, noisy = _batch()
    out, (out_noisy,) = random_flip_rotate(
        images, (noisy,), torch.Generator(), max_degrees=0.0, flip_prob=1.0
    )
    torch.testing.assert_close(out, images.flip(-1), atol=1e-5, rtol=0)
    assert torch.equal(out_noisy, noisy.flip(-1))


def test_image_and_masks_share_parameters_per_sample():
    _, _, noisy = _batch(batch=8)
    as_image = noisy.float()
    out, (out_mask,) = random_flip_rotate(
        as_image, (noisy,), torch.Generator().manual_seed(2), max_degrees=0.0, flip_prob=0.5
    )
    assert torch.equal(out.round().to(torch.uint8), out_mask)
    flipped = (out_mask != noisy).flatten(1).any(dim=1)
    assert 0 < flipped.sum() < 8  # some samples flipped, some not


def test_rotation_keeps_masks_binary_and_is_a_true_rotation_for_non_square_images():
    images, disc, noisy = _batch()
    _, (out_disc, out_noisy) = random_flip_rotate(images, (disc, noisy), torch.Generator(), max_degrees=30.0)
    assert set(out_disc.unique().tolist()) <= {0.0, 1.0}
    assert set(out_noisy.unique().tolist()) <= {0, 1}
    # A centred disc is invariant to flips and rotations in pixel units (an aspect error would squash it).
    assert (out_disc != disc).float().mean() < 0.01


def test_rotation_moves_pixels_and_fills_zero():
    images = torch.ones(2, 1, 24, 36)
    out, _ = random_flip_rotate(images, (), torch.Generator().manual_seed(1), max_degrees=30.0, flip_prob=0.0)
    assert (out.flatten(1).mean(dim=1) < 0.95).all()  # corners rotated in from outside the image are 0
    torch.testing.assert_close(out[:, :, 8:16, 14:22], torch.ones(2, 1, 8, 8))  # the centre stays


def test_same_seed_same_output():
    images, disc, noisy = _batch()
    first = random_flip_rotate(images, (disc, noisy), torch.Generator().manual_seed(4))
    second = random_flip_rotate(images, (disc, noisy), torch.Generator().manual_seed(4))
    other = random_flip_rotate(images, (disc, noisy), torch.Generator().manual_seed(5))
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1], strict=True))
    assert not torch.equal(first[0], other[0])
