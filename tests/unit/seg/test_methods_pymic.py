"""Optional cross-checks against PyMIC 0.6.2's noisy-label rules on the same tensors (skipped without it).

PyMIC (``pip install --no-deps PYMIC==0.6.2``) holds its rules inside training agents; where one can be
called on plain tensors it is compared here. Where PyMIC differs from the paper, the test states the
relation instead of equality (docs/method.md §5.2–5.3):

- GCE: the same per-pixel (1 − p_t^q)/q (softmax over two channels for binary data).
- MAE: PyMIC averages |p − t| over the class channels too, so ours (the sum over classes) is K × its.
- Noise-robust Dice: PyMIC's denominator is Σp + Σg over the whole batch (and it averages over every
  class, background included); the paper's and ours is Σp² + Σg² per image. They agree for hard maps.
- SLSR: the same smoothed targets for binary data ((y − 0.5)(1 − 2ε) + 0.5 is (1 − ε)y + ε(1 − y)).
- Tri-Net: PyMIC keeps the pixels below the loss quantile of each network and intersects two of them,
  without the peers' consensus on the predicted class; with predictions that agree everywhere and the
  same number kept, the masks are ours.
- DAST: the clean branch's divergence-weighted cross-entropy is PyMIC's ``loss_n`` (PyMIC scores a batch,
  the mean of our per-sample scores, and rounds p to 0.999·p + 5e-4); the dual-branch consistency is the
  same; PyMIC's queue ranks the same top share, and one rank more than ours at the bottom.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlbseg.seg.losses import gce_loss, mae_loss, nr_dice_loss, pixel_cross_entropy
from mlbseg.seg.selection import (
    noisiness_scores,
    pixel_divergence,
    ranked_extremes,
    small_loss_mask,
    smoothed_targets,
    trinet_masks,
)

pymic_ce = pytest.importorskip("pymic.loss.seg.ce")
pymic_mse = pytest.importorskip("pymic.loss.seg.mse")
pymic_dice = pytest.importorskip("pymic.loss.seg.dice")
pymic_slsr = pytest.importorskip("pymic.loss.seg.slsr")


def _binary_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 6, 6, generator=generator)
    targets = (torch.rand(2, 1, 6, 6, generator=generator) > 0.6).float()
    return logits, targets


def _two_channels(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The binary logit as two softmax logits (0, z) and the 0/1 map as one-hot (background first)."""
    return torch.cat([torch.zeros_like(logits), logits], dim=1), torch.cat([1 - targets, targets], dim=1)


def test_gce_is_pymics():
    logits, targets = _binary_batch()
    two_logits, one_hot = _two_channels(logits, targets)
    theirs = pymic_ce.GeneralizedCELoss({"loss_gce_q": 0.7})(
        {"prediction": two_logits, "ground_truth": one_hot}
    )
    torch.testing.assert_close(gce_loss(logits, targets, 0.7).mean(), theirs, rtol=1e-5, atol=1e-6)


def test_mae_is_k_times_pymics_channel_mean():
    logits, targets = _binary_batch()
    two_logits, one_hot = _two_channels(logits, targets)
    theirs = pymic_mse.MAELoss()({"prediction": two_logits, "ground_truth": one_hot})
    torch.testing.assert_close(mae_loss(logits, targets).mean(), 2 * theirs, rtol=1e-5, atol=1e-6)


def test_noise_robust_dice_agrees_with_pymics_for_hard_maps_of_one_image():
    _, targets = _binary_batch()
    targets = targets[:1]
    logits = 40.0 * (torch.rand(1, 1, 6, 6, generator=torch.Generator().manual_seed(4)) > 0.5).float() - 20.0
    theirs = pymic_dice.NoiseRobustDiceLoss({"noiserobustdiceloss_gamma": 1.5, "loss_acti_func": "sigmoid"})
    expected = theirs({"prediction": logits, "ground_truth": targets})
    torch.testing.assert_close(nr_dice_loss(logits, targets, 1.5).mean(), expected, rtol=1e-4, atol=1e-6)


def test_noise_robust_dice_differs_from_pymics_for_soft_maps():
    logits, targets = _binary_batch()
    theirs = pymic_dice.NoiseRobustDiceLoss({"noiserobustdiceloss_gamma": 1.5, "loss_acti_func": "sigmoid"})
    expected = theirs({"prediction": logits[:1], "ground_truth": targets[:1]})
    assert float(nr_dice_loss(logits[:1], targets[:1], 1.5).mean()) != pytest.approx(
        float(expected), rel=1e-3
    )


def test_slsr_targets_and_loss_are_pymics_for_binary_data():
    logits, targets = _binary_batch()
    errors = torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(5)) > 0.7
    ours = pixel_cross_entropy(
        torch.cat([torch.zeros_like(logits), logits], dim=1),
        smoothed_targets(targets[:, 0].long(), errors, 2, 0.25),
    ).mean()
    two_logits, one_hot = _two_channels(logits, targets)
    theirs = pymic_slsr.SLSRLoss({"slsrloss_epsilon": 0.25})(
        {"prediction": two_logits, "ground_truth": one_hot, "pixel_weight": errors[:, None].float()}
    )
    # PyMIC rescales probabilities to 0.999·p + 5e-4 before the log: equal to that rounding.
    torch.testing.assert_close(ours, theirs, rtol=2e-3, atol=2e-3)


def test_trinet_masks_are_pymics_joint_small_loss_when_the_peers_agree():
    trinet = pytest.importorskip("pymic.net_run.noisy_label.nll_trinet")  # needs tensorboardX too
    generator = torch.Generator().manual_seed(6)
    logits = [torch.randn(1, 2, 5, 5, generator=generator) for _ in range(3)]
    labels = (torch.rand(1, 1, 5, 5, generator=generator) > 0.5).long()
    one_hot = F.one_hot(labels[:, 0], 2).movedim(-1, 1).float()
    theirs = [trinet.NLLTriNet.get_loss_and_confident_mask(None, value, one_hot, 0.6) for value in logits]
    kept = int(theirs[0][1].sum())
    assert all(int(mask.sum()) == kept for _, mask in theirs)
    costs = [loss.view(1, 5, 5) for loss, _ in theirs]
    agree = [torch.zeros(1, 5, 5, dtype=torch.long)] * 3
    ours = trinet_masks(costs, agree, kept / costs[0].numel())
    for index, (first, second) in enumerate(((1, 2), (0, 2), (0, 1))):
        assert torch.equal(ours[index].flatten(), theirs[first][1] & theirs[second][1])
    assert torch.equal(small_loss_mask(costs[0], kept / 25).flatten(), theirs[0][1])


def _two_branches(samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class log-probabilities [N, 2, 5, 5] of a clean and a noisy branch, and labels [N, 5, 5]."""
    generator = torch.Generator().manual_seed(7)
    clean = torch.randn(samples, 2, 5, 5, generator=generator).log_softmax(dim=1)
    noisy = torch.randn(samples, 2, 5, 5, generator=generator).log_softmax(dim=1)
    labels = (torch.rand(samples, 5, 5, generator=generator) > 0.5).long()
    return clean, noisy, labels


def test_dast_scores_and_consistency_are_pymics():
    dast = pytest.importorskip("pymic.net_run.noisy_label.nll_dast")  # needs tensorboardX too
    clean, noisy, labels = _two_branches(3)
    one_hot = F.one_hot(labels, 2).movedim(-1, 1).float()
    # PyMIC scores a whole batch; its loss_n (the clean branch's weighted cross-entropy) is our per-sample
    # score's mean, up to its 0.999·p + 5e-4 rounding of the probabilities.
    loss_n, _ = dast.select_criterion(noisy.exp(), clean.exp(), one_hot)
    ours = noisiness_scores(clean, noisy, labels, 16.0)
    assert float(ours.mean()) == pytest.approx(loss_n, rel=2e-3)
    for sample in range(3):
        theirs, _ = dast.select_criterion(
            noisy[sample : sample + 1].exp(), clean[sample : sample + 1].exp(), one_hot[sample : sample + 1]
        )
        assert float(ours[sample]) == pytest.approx(theirs, rel=2e-3)
    # the dual-branch consistency: PyMIC's ½(KL(clean ‖ noisy) + KL(noisy ‖ clean)), pixel mean
    consistency = dast.ConsistLoss()(noisy.exp(), clean.exp())
    torch.testing.assert_close(pixel_divergence(clean, noisy).mean(), consistency, rtol=1e-5, atol=1e-6)


def test_dast_ranking_relates_to_pymics_rank_queue():
    dast = pytest.importorskip("pymic.net_run.noisy_label.nll_dast")
    length, share = 10, 0.2
    values = torch.randperm(60, generator=torch.Generator().manual_seed(8)).double().tolist()
    rank, memory = dast.Rank(length), torch.empty(0, dtype=torch.float64)
    for step, value in enumerate(values):
        theirs = rank.add_val(value)
        memory = torch.cat([memory, torch.tensor([value], dtype=torch.float64)])[-length:]
        severe, slight = (bool(mask) for mask in ranked_extremes(memory, memory[-1:], share))
        if step < length:  # PyMIC ranks nothing (-1) until its queue was full before the value
            assert theirs == -1
            continue
        assert severe == (theirs >= length * (1 - share))  # the top ⌊share·L⌋ ranks alike
        # PyMIC's bottom test rank ≤ share·L admits one rank more than ours (its ranks 0..⌊share·L⌋)
        assert slight == (theirs < length * share)
