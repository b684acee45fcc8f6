"""The noise-robust losses against their defining identities, by hand and with scipy."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from mlbseg.seg.losses import gce_loss, mae_loss, nr_dice_loss, pixel_cross_entropy, t_loss


def _batch(classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 logits [2, C, 4, 5] and hard class maps: 0/1 [2, 1, 4, 5] (binary) or one-hot [2, K, 4, 5]."""
    generator = torch.Generator().manual_seed(seed)
    channels = 1 if classes == 2 else classes
    logits = 2 * torch.randn(2, channels, 4, 5, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, classes, (2, 4, 5), generator=generator)
    if classes == 2:
        return logits, labels[:, None].double()
    return logits, F.one_hot(labels, classes).permute(0, 3, 1, 2).double()


def _true_class_probability(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        p = logits.sigmoid()[:, 0]
        y = targets[:, 0]
        return y * p + (1 - y) * (1 - p)
    return (logits.softmax(dim=1) * targets).sum(dim=1)


@pytest.mark.parametrize("classes", [2, 3])
def test_gce_tends_to_cross_entropy_as_q_goes_to_zero(classes):
    logits, targets = _batch(classes)
    torch.testing.assert_close(
        gce_loss(logits, targets, q=1e-7), pixel_cross_entropy(logits, targets), rtol=1e-5, atol=1e-9
    )
    expected_ce = -_true_class_probability(logits, targets).log()
    torch.testing.assert_close(pixel_cross_entropy(logits, targets), expected_ce, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("classes", [2, 3])
def test_gce_at_q_one_is_half_the_mae_and_the_paper_q_sits_between(classes):
    logits, targets = _batch(classes)
    p_t = _true_class_probability(logits, targets)
    torch.testing.assert_close(gce_loss(logits, targets, q=1.0), 1 - p_t)
    torch.testing.assert_close(mae_loss(logits, targets), 2 * (1 - p_t))
    torch.testing.assert_close(gce_loss(logits, targets), (1 - p_t**0.7) / 0.7)
    with pytest.raises(ValueError, match="0 < q <= 1"):
        gce_loss(logits, targets, q=0.0)


def test_mae_gives_bounded_gradients_where_cross_entropy_explodes():
    """A confidently wrong pixel (a wrong label): CE's gradient is ~1 per logit, MAE's vanishes."""
    logits = torch.tensor([[[[12.0]]]], dtype=torch.float64, requires_grad=True)  # predicts foreground
    wrong = torch.zeros(1, 1, 1, 1, dtype=torch.float64)  # the label says background
    (ce_grad,) = torch.autograd.grad(pixel_cross_entropy(logits, wrong).sum(), logits)
    (mae_grad,) = torch.autograd.grad(mae_loss(logits, wrong).sum(), logits)
    assert ce_grad.item() == pytest.approx(1.0, abs=1e-4)
    assert abs(mae_grad.item()) < 1e-4


@pytest.mark.parametrize("classes", [2, 3])
def test_nr_dice_at_gamma_two_is_the_dice_loss(classes):
    logits, targets = _batch(classes)
    probs = logits.sigmoid() if classes == 2 else logits.softmax(dim=1)[:, 1:]
    truth = targets if classes == 2 else targets[:, 1:]
    overlap = (probs * truth).sum(dim=(2, 3))
    squares = probs.square().sum(dim=(2, 3)) + truth.square().sum(dim=(2, 3))
    dice_loss = (1 - (2 * overlap + 1e-5) / (squares + 1e-5)).mean(dim=1)  # per image, mean over classes
    torch.testing.assert_close(nr_dice_loss(logits, targets, gamma=2.0), dice_loss)
    assert nr_dice_loss(logits, targets).shape == (2,)
    with pytest.raises(ValueError, match="1 <= gamma <= 2"):
        nr_dice_loss(logits, targets, gamma=2.5)


@pytest.mark.parametrize("classes", [2, 3])
def test_t_loss_is_the_student_t_negative_log_likelihood_per_value(classes):
    logits, targets = _batch(classes)
    nu = torch.tensor(1.7, dtype=torch.float64)
    probs = logits.sigmoid() if classes == 2 else logits.softmax(dim=1)
    ours = t_loss(logits, targets, nu)
    dims = probs[0].numel()
    for index in range(2):
        residual = (targets[index] - probs[index]).flatten().numpy()
        law = stats.multivariate_t(loc=[0.0] * dims, shape=1.0, df=1.7)
        assert ours[index].item() == pytest.approx(-law.logpdf(residual) / dims, rel=1e-10)


def test_t_loss_tends_to_the_gaussian_likelihood_and_learns_nu():
    logits, targets = _batch(2)
    residual = (targets - logits.sigmoid()).flatten(1)
    dims = residual.shape[1]
    gaussian = (dims / 2 * math.log(2 * math.pi) + residual.square().sum(dim=1) / 2) / dims
    huge = torch.tensor(1e9, dtype=torch.float64)
    torch.testing.assert_close(t_loss(logits, targets, huge), gaussian, rtol=1e-6, atol=1e-8)
    nu = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(t_loss(logits, targets, nu).sum(), nu)
    assert torch.isfinite(grad)
    assert grad.item() != 0
