"""Multi-view consistency: value against a per-pair loop, masking of unseen pixels, symmetric gradient."""

from __future__ import annotations

import itertools

import pytest
import torch

from mlbseg.seg.consistency import multiview_consistency
from mlbseg.seg.views import NUM_VIEWS, make_views, to_reference_frame, warp_sample_major


def _smooth_probs(batch: int = 2, size: int = 32) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    probs = torch.sigmoid(2 * x - y + 0.5)
    return probs.expand(batch, 1, size, size).clone()


def _params(batch: int = 2, size: int = 32, seed: int = 0):
    images = torch.zeros(batch, 1, size, size)
    _, _, params = make_views(images, [], torch.Generator().manual_seed(seed), zoom_pads=(2, 4, 6))
    return params


def test_matches_a_loop_over_pairs():
    params = _params()
    probs = torch.rand(10, 1, 32, 32, generator=torch.Generator().manual_seed(3))
    maps, valid = to_reference_frame(probs, params)
    terms = []
    for sample in range(2):
        for i, j in itertools.combinations(range(NUM_VIEWS), 2):
            a, b = sample * NUM_VIEWS + i, sample * NUM_VIEWS + j
            both = valid[a] & valid[b]
            terms.append(((maps[a] - maps[b]) ** 2)[both].mean())
    assert len(terms) == 20
    torch.testing.assert_close(multiview_consistency(probs, params), torch.stack(terms).mean())


def test_consistent_views_give_a_small_loss_and_random_ones_a_large_one():
    params = _params()
    probs = _smooth_probs()
    view_probs = warp_sample_major(probs, params.theta)  # the views of one underlying map
    consistent = multiview_consistency(view_probs, params)
    noisy = multiview_consistency(
        torch.rand(10, 1, 32, 32, generator=torch.Generator().manual_seed(0)), params
    )
    assert consistent < 1e-3
    assert noisy > 0.1


def test_unseen_border_is_not_compared():
    # Every view predicts 0.7 everywhere; comparing the zoom-in's unseen border as 0 (the reference) would
    # make the loss positive.
    params = _params()
    assert multiview_consistency(torch.full((10, 1, 32, 32), 0.7), params) < 1e-12


def test_gradient_reaches_every_view_and_loss_ignores_view_order():
    params = _params()
    probs = torch.rand(10, 1, 32, 32, generator=torch.Generator().manual_seed(5), requires_grad=True)
    multiview_consistency(probs, params).backward()
    per_view = probs.grad.abs().flatten(1).sum(dim=1)  # [10]
    assert (per_view > 0).all()
    # Each pair counts both ways: swapping the identity and flip views of a sample changes nothing.
    params_swapped = type(params)(
        params.theta[[4, 1, 2, 3, 0, 5, 6, 7, 8, 9]], params.inverse_theta[[4, 1, 2, 3, 0, 5, 6, 7, 8, 9]]
    )
    swapped = probs.detach()[[4, 1, 2, 3, 0, 5, 6, 7, 8, 9]]
    torch.testing.assert_close(
        multiview_consistency(swapped, params_swapped), multiview_consistency(probs.detach(), params)
    )


def test_half_precision_input_gives_float32_loss():
    params = _params()
    loss = multiview_consistency(_smooth_probs().repeat_interleave(5, 0).to(torch.bfloat16), params)
    assert loss.dtype == torch.float32
    assert torch.isfinite(loss)


def test_one_sided_pairing_has_the_value_and_pulls_only_the_lower_indexed_view():
    params = _params()
    probs = torch.rand(10, 1, 32, 32, generator=torch.Generator().manual_seed(6), requires_grad=True)
    one_sided = multiview_consistency(probs, params, "one_sided")
    torch.testing.assert_close(one_sided, multiview_consistency(probs.detach(), params))
    (grad,) = torch.autograd.grad(one_sided, probs)
    # The gradient of pair (i, j) reaches view i only, so the last view of each sample gets none.
    per_view = grad.flatten(1).abs().sum(dim=1)  # [10]
    assert per_view[[4, 9]].eq(0).all()
    assert (per_view[[0, 1, 2, 3, 5, 6, 7, 8]] > 0).all()


def test_an_unknown_pairing_is_refused():
    params = _params()
    with pytest.raises(ValueError, match="pairing 'sideways'"):
        multiview_consistency(torch.rand(10, 1, 32, 32), params, "sideways")
