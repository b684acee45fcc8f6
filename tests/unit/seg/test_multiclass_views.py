"""K > 2 labels in the views: hard labels of warped one-hot maps, the softmax pseudo-label, consistency."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlbseg.seg.consistency import multiview_consistency
from mlbseg.seg.label_space import BinaryLabels, MultiClassLabels, hard_labels, label_maps, label_space
from mlbseg.seg.views import NUM_VIEWS, ViewParams, average_pseudo_labels, make_views, warp_sample_major

K = 3
# Per sample: identity, flip of the columns, identity, flip of the rows, flip of both (x, y scales):
# every view maps pixel centres onto pixel centres, so bilinear warps are exact permutations.
SCALES = ((1.0, 1.0), (-1.0, 1.0), (1.0, 1.0), (1.0, -1.0), (-1.0, -1.0))
FLIP_DIMS = ((), (-1,), (), (-2,), (-2, -1))  # the same views as torch.flip dimensions


def exact_views(batch: int) -> ViewParams:
    """:class:`ViewParams` of :data:`SCALES` for ``batch`` samples (each view is its own inverse)."""
    scales = torch.tensor(SCALES).repeat(batch, 1)  # [5B, 2]
    theta = F.pad(torch.diag_embed(scales), (0, 1))  # [5B, 2, 3]
    return ViewParams(theta, theta.clone())


def class_maps(batch: int, height: int = 7, width: int = 6, seed: int = 0) -> torch.Tensor:
    """[B, 1, H, W] float class indices 0..K−1, random."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(K, (batch, 1, height, width), generator=generator).float()


def test_the_label_space_follows_the_number_of_labels():
    assert label_space(2) == BinaryLabels()
    assert label_space(4) == MultiClassLabels(4)
    assert (label_space(2).loss, label_space(3).loss) == ("bce", "ce")
    with pytest.raises(ValueError, match="at least 2 labels"):
        label_space(1)


def test_hard_labels_of_one_channel_are_the_threshold_at_one_half():
    maps = torch.tensor([0.0, 0.49, 0.5, 0.51, 1.0]).view(1, 1, 1, 5)
    assert hard_labels(maps).flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
    binary = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    assert label_maps(binary, 2) is binary  # binary maps are warped as they are


def test_hard_labels_of_one_hot_maps_under_identity_and_flip_views_are_the_nearest_class_maps():
    labels = class_maps(2)
    one_hot = label_maps(labels, K)  # [B, K, H, W]
    assert one_hot.shape == (2, K, 7, 6)
    assert torch.equal(one_hot.sum(dim=1), torch.ones(2, 7, 6))
    warped = warp_sample_major(one_hot, exact_views(2).theta)  # [5B, K, H, W], bilinear
    hard = hard_labels(warped)
    nearest_grid = F.affine_grid(exact_views(2).theta, [10, 1, 7, 6], align_corners=False)
    nearest = F.grid_sample(
        labels.repeat_interleave(NUM_VIEWS, 0), nearest_grid, mode="nearest", align_corners=False
    )
    assert torch.equal(hard, nearest)
    for row in range(10):
        sample, view = divmod(row, NUM_VIEWS)
        assert torch.equal(hard[row], torch.flip(labels[sample], FLIP_DIMS[view]))


def test_make_views_warps_class_maps_as_one_hot_maps_and_keeps_their_classes():
    generator = torch.Generator().manual_seed(0)
    labels = torch.zeros(2, 1, 16, 16)
    labels[:, :, 4:12, 4:12] = 1
    labels[:, :, 6:10, 6:10] = 2
    images = torch.rand(2, 2, 16, 16)  # two channels
    view_images, (view_labels,), params = make_views(images, [labels], generator, (2, 4), num_labels=K)
    assert view_images.shape == (10, 2, 16, 16)
    assert view_labels.shape == (10, 1, 16, 16)
    assert set(view_labels.unique().tolist()) == {0.0, 1.0, 2.0}
    identity = view_labels[0::NUM_VIEWS]
    assert torch.equal(identity, labels)
    # a zoom-out pads with background; the view's inner square stays the top class
    zoom_out = view_labels[2, 0]
    assert zoom_out[0].eq(0).all()
    assert zoom_out[:, 0].eq(0).all()
    assert zoom_out[7:9, 7:9].eq(2).all()
    expected = hard_labels(warp_sample_major(label_maps(labels, K), params.theta))
    assert torch.equal(view_labels, expected)


def test_the_pseudo_label_is_the_argmax_of_the_view_averaged_softmax():
    batch = 2
    generator = torch.Generator().manual_seed(3)
    probs = torch.randn(batch * NUM_VIEWS, K, 7, 6, generator=generator).softmax(dim=1)  # in the views
    pseudo = average_pseudo_labels(probs, exact_views(batch))
    assert pseudo.shape == (batch * NUM_VIEWS, 1, 7, 6)
    for sample in range(batch):
        rows = range(sample * NUM_VIEWS, (sample + 1) * NUM_VIEWS)
        # by hand: undo each view's flip, average the five softmax maps, argmax, flip into each view
        mean = sum(torch.flip(probs[row], FLIP_DIMS[row % NUM_VIEWS]) for row in rows) / NUM_VIEWS
        argmax = mean.argmax(dim=0, keepdim=True).float()  # [1, H, W]
        for row in rows:
            assert torch.equal(pseudo[row], torch.flip(argmax, FLIP_DIMS[row % NUM_VIEWS])), row


def test_consistency_of_a_two_class_softmax_equals_the_binary_term_on_its_foreground():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(2 * NUM_VIEWS, 2, 7, 6, generator=generator)
    params = exact_views(2)
    softmax = logits.softmax(dim=1)
    two_class = multiview_consistency(softmax, params)
    binary = multiview_consistency(softmax[:, 1:], params)
    torch.testing.assert_close(two_class, binary, rtol=1e-6, atol=0)
    assert two_class > 0


def test_consistency_over_k_classes_is_the_mean_over_class_channels():
    generator = torch.Generator().manual_seed(2)
    probs = torch.randn(NUM_VIEWS, K, 7, 6, generator=generator).softmax(dim=1)
    params = exact_views(1)
    per_channel = [multiview_consistency(probs[:, [c]], params) for c in range(K)]
    torch.testing.assert_close(multiview_consistency(probs, params), sum(per_channel) / K)


def test_multiclass_costs_targets_and_foreground():
    space = MultiClassLabels(K)
    labels = class_maps(2)
    logits = torch.randn(2, K, 7, 6)
    costs = space.costs(logits, labels)
    assert costs.shape == (2, 7, 6)
    torch.testing.assert_close(costs, -logits.log_softmax(1).gather(1, labels.long())[:, 0])
    assert space.targets(labels).dtype == torch.int64
    foreground = space.foreground(labels)
    assert foreground.shape == (2, K - 1, 7, 6)
    assert torch.equal(foreground[:, 1], (labels[:, 0] == 2).float())
