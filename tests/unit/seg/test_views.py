"""Five views, their inverse and pseudo-label averaging against an independent resize/crop/pad version."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlbseg.errors import UserError
from mlbseg.seg.views import NUM_VIEWS, ViewParams, average_pseudo_labels, make_views, to_reference_frame

PADS = (2, 4, 6, 8)


def _scene(batch: int = 3, height: int = 48, width: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth image [B, 1, H, W] that is not zero at the border and a disc mask [B, 1, H, W]."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    image = torch.sin(1.5 * x + 1) * torch.cos(1.2 * y) + 0.5 * x * y
    mask = ((x - 0.1) ** 2 + (y + 0.05) ** 2 < 0.3).float()
    shifts = torch.arange(batch, dtype=torch.float32)[:, None, None, None] * 0.1
    return image.expand(batch, 1, height, width) + shifts, mask.expand(batch, 1, height, width).clone()


def _views(seed: int = 1, **kwargs):
    images, mask = _scene(**kwargs)
    generator = torch.Generator().manual_seed(seed)
    view_images, (view_mask,), params = make_views(images, [mask], generator, zoom_pads=PADS)
    return images, mask, view_images, view_mask, params


def _reference_view(image: torch.Tensor, view: int, scale: torch.Tensor) -> torch.Tensor:
    """View ``view`` of image [1, C, H, W] the plain way: F.interpolate + crop / pad / torch.flip."""
    height, width = image.shape[-2:]
    if view == 0:
        return image
    if view == 4:
        return torch.flip(image, [dim for dim, s in ((-1, scale[0]), (-2, scale[1])) if s < 0])
    pad_x, pad_y = (round(abs(size / s - size) / 2) for size, s in ((width, scale[0]), (height, scale[1])))
    sign = 1 if view == 1 else -1
    resized = F.interpolate(
        image,
        size=(height + 2 * sign * pad_y, width + 2 * sign * pad_x),
        mode="bilinear",
        align_corners=False,
    )
    if view == 1:
        return resized[..., pad_y : pad_y + height, pad_x : pad_x + width]
    return F.pad(resized, (pad_x, pad_x, pad_y, pad_y))


def _pads(params, height: int, width: int) -> torch.Tensor:
    """Recovered pads [B, 5] along x: zoom-in positive, zoom-out negative, 0 for identity and flip."""
    scale_x = params.theta[:, 0, 0].abs().view(-1, NUM_VIEWS)
    return ((width / scale_x - width) / 2).round()


def test_shapes_dtypes_and_device():
    images, _, view_images, view_mask, params = _views()
    assert view_images.shape == (15, 1, 48, 40)
    assert view_images.dtype == images.dtype
    assert view_mask.shape == (15, 1, 48, 40)
    assert view_mask.dtype == images.dtype
    assert set(view_mask.unique().tolist()) <= {0.0, 1.0}
    assert params.theta.shape == params.inverse_theta.shape == (15, 2, 3)
    assert params.batch_size == 3
    torch.testing.assert_close(
        params.theta[:, :, :2] @ params.inverse_theta[:, :, :2], torch.eye(2).expand(15, 2, 2)
    )


def test_views_equal_resize_crop_pad_and_flip():
    images, mask, view_images, view_mask, params = _views()
    for row in range(view_images.shape[0]):
        sample, view = divmod(row, NUM_VIEWS)
        scale = params.theta[row].diagonal().tolist()
        expected = _reference_view(images[sample : sample + 1], view, scale)[0]
        torch.testing.assert_close(view_images[row], expected, atol=2e-6, rtol=0)
        expected_mask = _reference_view(mask[sample : sample + 1], view, scale)[0]
        mismatch = view_mask[row] != (expected_mask > 0.5).float()
        # Only bilinear values that sit on the 0.5 threshold (float rounding) may land on either side.
        assert ((expected_mask[mismatch] - 0.5).abs() < 1e-5).all()


def test_view_draws_follow_the_spec():
    _, _, _, _, params = _views(batch=16)
    pads = _pads(params, 48, 40)  # [B, 5]
    assert (pads[:, 0] == 0).all()
    assert (pads[:, 4] == 0).all()
    assert set(pads[:, 1].tolist()) <= set(PADS)
    assert set((-pads[:, 2:4]).flatten().tolist()) <= set(PADS)
    assert (pads[:, 2] != pads[:, 3]).all()  # two distinct zoom-outs per sample
    flips = params.theta.view(16, NUM_VIEWS, 2, 3)[:, 4].diagonal(dim1=-2, dim2=-1)  # [B, 2]
    assert {tuple(f) for f in flips.tolist()} <= {(1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0)}
    assert len({tuple(row) for row in pads[:, 1:4].tolist()}) > 1  # samples get their own parameters


def test_same_generator_seed_reproduces_and_other_seed_differs():
    first, second, other = _views(seed=7), _views(seed=7), _views(seed=8)
    torch.testing.assert_close(first[2], second[2], rtol=0, atol=0)
    torch.testing.assert_close(first[4].theta, second[4].theta, rtol=0, atol=0)
    assert not torch.equal(first[4].theta, other[4].theta)


def test_back_mapping_recovers_the_image_where_valid():
    images, _, view_images, _, params = _views()
    maps, valid = to_reference_frame(view_images, params)
    assert maps.shape == view_images.shape
    assert valid.shape == (15, 1, 48, 40)
    assert valid.dtype == torch.bool
    original = images.repeat_interleave(NUM_VIEWS, dim=0)
    error = ((maps - original).abs() * valid).view(3, NUM_VIEWS, -1).amax(dim=-1)  # [B, 5]
    assert (error[:, [0, 4]] < 1e-5).all()  # identity and flip invert exactly
    assert (error < 0.05).all()  # zooms: bilinear interpolation error of a smooth image
    assert (maps[~valid.expand_as(maps)] == 0).all()


def test_valid_mask_excludes_exactly_the_cropped_border():
    _, _, view_images, _, params = _views()
    _, valid = to_reference_frame(view_images, params)
    valid = valid.view(3, NUM_VIEWS, 48, 40)
    assert valid[:, [0, 2, 3, 4]].all()
    for sample, pad in enumerate(_pads(params, 48, 40)[:, 1].long().tolist()):
        scale_y = params.theta[sample * NUM_VIEWS + 1, 1, 1].item()
        pad_y = round((48 / scale_y - 48) / 2)
        # Pixel j is seen by the zoom-in iff its centre lies inside the crop: (2j + 1)(W + 2p) >= 2pW.
        cols = [(2 * j + 1) * (40 + 2 * pad) >= 2 * pad * 40 for j in range(40)]
        rows = [(2 * i + 1) * (48 + 2 * pad_y) >= 2 * pad_y * 48 for i in range(48)]
        expected = torch.tensor(rows)[:, None] & torch.tensor(cols) & torch.tensor(cols).flip(0)
        expected &= torch.tensor(rows).flip(0)[:, None]
        assert torch.equal(valid[sample, 1], expected)
        assert not valid[sample, 1, 0].any()


def test_perfect_predictor_gets_its_own_masks_back():
    _, _, _, view_mask, params = _views(batch=4)
    pseudo = average_pseudo_labels(view_mask, params)
    assert pseudo.shape == view_mask.shape
    assert pseudo.dtype == view_mask.dtype
    agreement = (pseudo == view_mask).float().view(4, NUM_VIEWS, -1).mean(dim=-1)  # [B, 5]
    assert (agreement >= 0.99).all()  # boundary pixels of the zoomed views may differ
    assert (agreement[:, [0, 4]] == 1).all()


def test_pseudo_labels_average_views_and_ignore_unseen_border():
    # Constant 0.6 everywhere in every view: the mean is 0.6 wherever seen, so every pixel is foreground in
    # the views' image content. Averaging the zoom-in's unseen border as 0 (the reference) would give 0.48.
    _, _, view_images, _, params = _views()
    probs = torch.full_like(view_images, 0.6)
    pseudo = average_pseudo_labels(probs.requires_grad_(), params)
    assert not pseudo.requires_grad
    rows = pseudo.view(3, NUM_VIEWS, 48, 40)
    assert (rows[:, [0, 1, 4]] == 1).all()
    assert (rows[:, 2:4, 0, :] == 0).all()  # zoom-out padding stays background


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_are_kept(dtype):
    images, mask = _scene(batch=2)
    view_images, (view_mask,), params = make_views(images.to(dtype), [mask.bool()], torch.Generator(), PADS)
    maps, _ = to_reference_frame(view_images, params)
    assert view_images.dtype == view_mask.dtype == maps.dtype == dtype
    assert average_pseudo_labels(view_mask, params).dtype == dtype


def test_rejects_pads_too_large_for_the_image():
    images, mask = _scene(batch=1, height=16, width=16)
    with pytest.raises(UserError, match="zoom_pads"):
        make_views(images, [mask], torch.Generator(), zoom_pads=(4, 8))
    with pytest.raises(UserError, match="zoom_pads"):
        make_views(images, [mask], torch.Generator(), zoom_pads=(4, 4))


def test_runs_under_cpu_autocast():
    images, mask = _scene(batch=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        view_images, (view_mask,), params = make_views(images, [mask], torch.Generator(), PADS)
        pseudo = average_pseudo_labels(view_mask.to(torch.bfloat16), params)
    assert view_images.dtype == torch.float32
    assert pseudo.dtype == torch.bfloat16
    assert ((pseudo == view_mask).float().mean() >= 0.99).item()


@pytest.mark.gpu
def test_cuda_matches_cpu_for_the_same_geometry():
    images, mask, view_images, view_mask, params = _views()
    cuda = ViewParams(params.theta.cuda(), params.inverse_theta.cuda())
    maps, valid = to_reference_frame(view_images.cuda(), cuda)
    expected_maps, expected_valid = to_reference_frame(view_images, params)
    torch.testing.assert_close(maps.cpu(), expected_maps, atol=1e-5, rtol=0)
    assert torch.equal(valid.cpu(), expected_valid)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        pseudo = average_pseudo_labels(view_mask.cuda().to(torch.bfloat16), cuda)
    assert ((pseudo.float().cpu() == view_mask).float().mean() >= 0.99).item()
    generator = torch.Generator("cuda").manual_seed(0)
    cuda_views, (cuda_mask,), cuda_params = make_views(images.cuda(), [mask.cuda()], generator, PADS)
    assert all(t.is_cuda for t in (cuda_views, cuda_mask, cuda_params.theta))
