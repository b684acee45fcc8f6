"""The public API's names, shapes and error messages."""

from __future__ import annotations

import pytest
import torch

import mlbseg.meta
from mlbseg.meta import bootstrap_weights

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def test_public_names():
    assert callable(mlbseg.meta.bootstrap_weights)
    assert sorted(mlbseg.meta.SCORERS) == ["forward", "lookahead"]
    assert not hasattr(mlbseg.meta, "METHODS")  # renamed: the training-method tuples are METHODS
    assert sorted(mlbseg.meta.NORMALIZERS) == [
        "clamp_sum",
        "sigmoid_sum",
        "softmax_over_batch",
        "softmax_per_sample",
    ]


@pytest.mark.parametrize("normalize", ["softmax", "softmax_over_batch", "sigmoid_sum"])
@pytest.mark.parametrize("kind", ["seg", "cls", "seg_ce"])
def test_every_normaliser_gives_non_negative_weights_shaped_like_the_costs(case_factory, kind, normalize):
    case = case_factory(kind, "momentum_wd", steps=1)
    alpha, beta = bootstrap_weights(*case.call_args(), loss=case.loss, normalize=normalize, temperature=0.5)
    assert alpha.shape == beta.shape == case.noisy.shape
    assert (alpha >= 0).all()
    assert (beta >= 0).all()
    total = (alpha + beta).reshape(len(alpha), -1).sum(dim=1)
    if normalize == "softmax" and kind != "cls":  # per-pixel costs: each view's two maps sum to 1
        torch.testing.assert_close(total, torch.ones_like(total))
    else:
        torch.testing.assert_close(total.sum(), torch.tensor(1.0, dtype=total.dtype))


def test_per_pixel_cross_entropy_weights_one_entry_per_pixel(case_factory):
    """K-class segmentation: logits [N, C, H, W], indices [N, H, W] -> α, β [N, H, W], like its costs."""
    case = case_factory("seg_ce", "momentum_wd", steps=1)
    assert case.noisy.shape == (6, 16, 16)
    assert case.noisy.dtype == torch.int64
    alpha, beta = bootstrap_weights(*case.call_args(), loss="ce")
    assert alpha.shape == beta.shape == (6, 16, 16)
    torch.testing.assert_close(alpha.sum() + beta.sum(), torch.tensor(1.0, dtype=torch.float64))
    one_hot = torch.nn.functional.one_hot(case.noisy, 3).permute(0, 3, 1, 2).double()  # soft form, same costs
    pseudo = torch.nn.functional.one_hot(case.pseudo, 3).permute(0, 3, 1, 2).double()
    args = list(case.call_args())
    args[3:5] = one_hot, pseudo
    alpha_soft, beta_soft = bootstrap_weights(*args, loss="ce")
    torch.testing.assert_close(alpha_soft, alpha, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(beta_soft, beta, rtol=1e-10, atol=1e-14)


def test_unknown_names_list_the_choices(case_factory):
    case = case_factory("cls", "plain", steps=0)
    with pytest.raises(
        ValueError, match=r"Unknown meta-weighting method 'exact'; choose from \['forward', 'lookahead'\]"
    ):
        bootstrap_weights(*case.call_args(), loss="ce", method="exact")
    with pytest.raises(ValueError, match=r"Unknown weight normaliser 'hard'; choose from \['clamp_sum'"):
        bootstrap_weights(*case.call_args(), loss="ce", normalize="hard")
    with pytest.raises(ValueError, match=r"Unknown loss 'nll'"):
        bootstrap_weights(*case.call_args(), loss="nll")


def test_optimizer_must_be_sgd_adam_or_adamw(case_factory):
    case = case_factory("cls", "plain", steps=0)
    case.optimizer = torch.optim.RMSprop(case.model.parameters())
    with pytest.raises(TypeError, match=r"torch\.optim\.SGD, torch\.optim\.Adam and torch\.optim\.AdamW"):
        bootstrap_weights(*case.call_args(), loss="ce")


def test_target_shape_mismatch_is_reported(case_factory):
    case = case_factory("seg", "plain", steps=0)
    case.noisy = case.noisy[:, 0]
    with pytest.raises(ValueError, match="loss='bce' needs targets shaped like the logits"):
        bootstrap_weights(*case.call_args(), loss="bce")
