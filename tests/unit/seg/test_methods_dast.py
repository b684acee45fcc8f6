"""The dast method (Yang et al., IEEE JBHI 2022): its scores, its ranking, its targets, its step and resume.

The rules (mlbseg.seg.selection) are checked on hand-made tensors; the step on tiny conv nets without
BatchNorm with SGD lr 0.1 and no clipping (as test_methods_selection.py), so that each network's update is
exactly −0.1 × the gradient of the loss it should have trained on; the run on the tiny prepared dataset.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch._inductor.config  # imported while collecting, as in test_trainer.py
from torch import nn

from mlbseg.errors import UserError
from mlbseg.seg.config import DataConfig, MethodConfig, SegConfig, check_config
from mlbseg.seg.evaluate import evaluated_weights
from mlbseg.seg.model import LogitMean
from mlbseg.seg.peers import PeerNetwork
from mlbseg.seg.selection import (
    class_log_probabilities,
    kl_divergence_map,
    masked_mean,
    noisiness_scores,
    pixel_divergence,
    ranked_extremes,
    refined_labels,
    sharpen,
    sigmoid_rampup,
)
from mlbseg.seg.step import Batch, SegmentationStep
from mlbseg.seg.trainer import SegmentationRun

from ._prepared import write_prepared
from ._runs import build, config, through_torch_save

pytestmark = pytest.mark.usefixtures("restore_determinism", "one_thread")

LR = 0.1
CPU = torch.device("cpu")


# ------------------------------------------------------------------------------------------ the rules


def test_binary_class_log_probabilities_are_background_then_foreground():
    logits = torch.tensor([-2.0, 0.0, 3.0]).view(1, 1, 1, 3)
    log_probs = class_log_probabilities(logits)
    assert log_probs.shape == (1, 2, 1, 3)
    foreground = torch.sigmoid(logits)
    torch.testing.assert_close(log_probs.exp(), torch.cat([1 - foreground, foreground], dim=1))
    multi = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(class_log_probabilities(multi).exp().sum(dim=1), torch.ones(2, 4, 4))


# one slice, two pixels, two classes: p = (0.5, 0.5), (0.9, 0.1); q = (0.5, 0.5), (0.6, 0.4)
P = torch.tensor([[0.5, 0.9], [0.5, 0.1]]).view(1, 2, 1, 2).log()
Q = torch.tensor([[0.5, 0.6], [0.5, 0.4]]).view(1, 2, 1, 2).log()
KL_PQ = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
KL_QP = 0.6 * math.log(0.6 / 0.9) + 0.4 * math.log(0.4 / 0.1)


def test_the_pixel_divergence_is_the_symmetric_kl_of_the_two_predictions():
    assert kl_divergence_map(P, Q).flatten().tolist() == pytest.approx([0.0, KL_PQ], abs=1e-6)
    expected = [0.0, 0.5 * (KL_PQ + KL_QP)]
    assert pixel_divergence(P, Q).flatten().tolist() == pytest.approx(expected, abs=1e-6)
    assert pixel_divergence(Q, P).flatten().tolist() == pytest.approx(expected, abs=1e-6)
    assert pixel_divergence(P, P).abs().max() == 0.0


def test_the_noisiness_score_is_the_clean_branchs_cross_entropy_weighted_by_agreement():
    labels = torch.tensor([[[1, 0]]])  # [1, 1, 2]: the first pixel labelled 1, the second 0
    divergence = 0.5 * (KL_PQ + KL_QP)
    # P is the clean branch: CE −log 0.5 at the first pixel (divergence 0), −log 0.9 at the second
    expected = 0.5 * (-math.log(0.5) + math.exp(-16 * divergence) * -math.log(0.9))
    assert noisiness_scores(P, Q, labels, 16.0).tolist() == pytest.approx([expected], rel=1e-5)
    unweighted = 0.5 * (-math.log(0.5) - math.log(0.9))
    assert noisiness_scores(P, Q, labels, 0.0).tolist() == pytest.approx([unweighted], rel=1e-5)
    # a label that the clean branch predicts with certainty scores (almost) nothing; its negation a lot
    sure = torch.tensor([[-1e-6, -20.0]]).view(1, 2, 1, 1)  # log (≈1, ≈2e-9)
    assert float(noisiness_scores(sure, sure, torch.tensor([[[0]]]), 16.0)) < 1e-5
    assert float(noisiness_scores(sure, sure, torch.tensor([[[1]]]), 16.0)) == pytest.approx(20.0)
    two = torch.cat([P, P])  # one score per sample
    assert noisiness_scores(two, torch.cat([Q, P]), torch.cat([labels, labels]), 16.0).shape == (2,)


def test_the_top_and_bottom_shares_of_the_memory_are_severe_and_slight():
    ranking = torch.tensor([1.0, 5.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 0.0])  # share 0.2 of 10: two
    severe, slight = ranked_extremes(ranking, torch.tensor([9.0, 8.0, 7.0, 0.0, 1.0, 2.0]), 0.2)
    assert severe.tolist() == [True, True, False, False, False, False]
    assert slight.tolist() == [False, False, False, True, True, False]
    nothing = ranked_extremes(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([4.0, 1.0]), 0.2)
    assert not any(mask.any() for mask in nothing)  # under 1/share scores: nothing is selected
    equal = ranked_extremes(torch.full((5,), 2.0), torch.tensor([2.0]), 0.4)
    assert [bool(mask) for mask in equal] == [True, True]  # equal scores lie neither above nor below
    none = ranked_extremes(ranking, torch.tensor([9.0, 0.0]), 0.0)
    assert not any(mask.any() for mask in none)


def test_refined_labels_vote_and_sharpening_makes_two_of_three_votes_eighty_percent():
    clean = torch.tensor([[0.2, 0.9], [0.8, 0.1]]).view(1, 2, 1, 2).log()  # predicts 1, then 0
    noisy = torch.tensor([[0.7, 0.6], [0.3, 0.4]]).view(1, 2, 1, 2).log()  # predicts 0, then 0
    labels = torch.tensor([[[1, 0]]])
    votes = refined_labels(clean, noisy, labels)  # [1, 2, 1, 2]
    torch.testing.assert_close(votes[0, :, 0].T, torch.tensor([[1 / 3, 2 / 3], [1.0, 0.0]]))
    sharp = sharpen(votes, 0.5)
    torch.testing.assert_close(sharp[0, :, 0].T, torch.tensor([[0.2, 0.8], [1.0, 0.0]]))
    three = sharpen(torch.tensor([[0.5, 0.25, 0.25]]), 0.5)  # K > 2: normalised over the classes
    torch.testing.assert_close(three, torch.tensor([[4 / 6, 1 / 6, 1 / 6]]))
    torch.testing.assert_close(sharpen(votes, 1.0), votes)


def test_the_sigmoid_ramp_up():
    assert [sigmoid_rampup(epoch, 4) for epoch in (0, 2, 4, 9)] == pytest.approx(
        [math.exp(-5), math.exp(-5 / 4), 1.0, 1.0]
    )
    assert sigmoid_rampup(0, 0) == 1.0


def test_the_dast_parameters_are_checked():
    for key, value in (
        ("dast_queue", 0),
        ("dast_select_share", 0.6),
        ("dast_select_share", -0.1),
        ("dast_divergence_scale", -1.0),
        ("dast_consistency_weight", -1.0),
        ("dast_supplementary_weight", -0.1),
        ("dast_ramp_epochs", -1),
        ("dast_temperature", 0.0),
        ("dast_temperature", 1.5),
    ):
        with pytest.raises(UserError, match=rf"method\.{key}"):
            check_config(SegConfig(method=MethodConfig(name="dast", **{key: value})))
    check_config(SegConfig(method=MethodConfig(name="dast")))


# ------------------------------------------------------------------------------------------ the step


def _net(classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    channels = 1 if classes == 2 else classes
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, channels, 3, padding=1))


def _step(classes: int, *, epochs: int = 1, **method: float) -> SegmentationStep:
    models = [_net(classes, seed) for seed in range(2)]
    optimizers = [torch.optim.SGD(model.parameters(), lr=LR) for model in models]
    return SegmentationStep(
        models[0],
        optimizers[0],
        method=MethodConfig(name="dast", **method),
        data=DataConfig(flip_prob=0.0, rotation_degrees=0.0),
        grad_clip_norm=None,
        generator=torch.Generator().manual_seed(0),
        num_labels=classes,
        peers=[PeerNetwork(models[1], optimizers[1])],
        epochs=epochs,
    )


def _hand_batch(classes: int, seed: int = 1) -> Batch:
    """Two 8×8 slices: a square of class 1 with (K > 2) an inner square of the top class."""
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    labels = torch.zeros(2, 1, 8, 8)
    labels[:, :, 2:6, 2:6] = 1
    if classes > 2:
        labels[:, :, 3:5, 3:5] = classes - 1
    labels[1, :, :2] = 1  # the second slice's label is worse
    return Batch(images, labels, labels.clone(), None)


def _sgd(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor]) -> None:
    """One plain SGD step of ``model`` (a copy) on the loss that ``loss_of(model)`` returns."""
    gradients = torch.autograd.grad(loss_of(model), list(model.parameters()))
    with torch.no_grad():
        for param, grad in zip(model.parameters(), gradients, strict=True):
            param -= LR * grad


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1).mean(dim=1)


def _assert_same(model: nn.Module, expected: nn.Module) -> None:
    for param, value in zip(model.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(param.detach(), value.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize(("ramp_epochs", "epoch"), [(0, 0), (4, 2)])
def test_the_dast_step_drops_severe_labels_and_adds_consistency_and_supplementary_targets(
    classes, ramp_epochs, epoch
):
    step = _step(
        classes,
        dast_select_share=0.2,
        dast_consistency_weight=0.5,
        dast_supplementary_weight=0.7,
        dast_ramp_epochs=ramp_epochs,
    )
    step.begin_epoch(epoch)
    batch, meta = _hand_batch(classes), _hand_batch(classes, seed=2)
    clean, noisy = copy.deepcopy(step.model), copy.deepcopy(step.peers[0].model)
    clean_targets = class_log_probabilities(clean(batch.images)).detach()
    noisy_targets = class_log_probabilities(noisy(batch.images)).detach()
    labels = batch.labels[:, 0].long()
    scores = noisiness_scores(clean_targets, noisy_targets, labels, 16.0)
    assert scores[0] != scores[1]
    # eight earlier scores between the two: of ten, the higher one is severe, the lower one slight
    step.noisiness.load_state_dict({"noisiness": torch.full((8,), float(scores.mean()))}, CPU)
    severe = scores == scores.max()
    slight = ~severe
    weight = math.exp(-5 * (1 - epoch / ramp_epochs) ** 2) if ramp_epochs else 1.0
    consistency = 0.5 * weight * 0.5
    target = sharpen(refined_labels(clean_targets, noisy_targets, labels), 0.5)

    def noisy_loss(net: nn.Module) -> torch.Tensor:
        logits = net(batch.images)
        kept = masked_mean(_per_sample(step.labels.costs(logits, batch.labels)), ~severe)
        pulled = _per_sample(kl_divergence_map(clean_targets, class_log_probabilities(logits)))
        return kept + consistency * (pulled * severe).mean()

    def clean_loss(net: nn.Module) -> torch.Tensor:
        logits = net(batch.images)
        log_probs = class_log_probabilities(logits)
        supplementary = (_per_sample((log_probs.exp() - target).abs()) * slight).mean()
        pulled = (_per_sample(kl_divergence_map(noisy_targets, log_probs)) * severe).mean()
        meta_cost = step.labels.costs(net(meta.images), meta.labels).mean()
        return meta_cost + consistency * pulled + weight * 0.7 * supplementary

    _sgd(clean, clean_loss)
    _sgd(noisy, noisy_loss)
    stats = step(batch, meta, meta_weighting=True)
    _assert_same(step.model, clean)
    _assert_same(step.peers[0].model, noisy)
    assert float(stats["severe_share"]) == 0.5 == float(stats["slight_share"])
    assert float(stats["noisiness"]) == pytest.approx(float(scores.mean()), rel=1e-5)
    assert float(stats["meta_loss"]) > 0


def test_in_warm_up_no_sample_is_selected():
    step, reference = _step(2), _step(2)
    batch, meta = _hand_batch(2), _hand_batch(2, seed=2)
    step.noisiness.load_state_dict({"noisiness": torch.full((8,), 0.3)}, CPU)
    clean, noisy = copy.deepcopy(step.model), copy.deepcopy(step.peers[0].model)
    _sgd(clean, lambda net: step.labels.costs(net(meta.images), meta.labels).mean())
    _sgd(noisy, lambda net: step.labels.costs(net(batch.images), batch.labels).mean())
    warm = step(batch, meta, meta_weighting=False)
    assert float(warm["severe_share"]) == 0.0 == float(warm["slight_share"])
    _assert_same(step.model, clean)
    _assert_same(step.peers[0].model, noisy)
    assert len(step.noisiness.state_dict()["noisiness"]) == 10  # the memory still fills
    assert reference.noisiness.state_dict() == {"noisiness": None}


def test_the_memory_keeps_the_last_dast_queue_scores_oldest_first():
    step = _step(2, dast_queue=3)
    scores = []
    for seed in range(3):
        batch = _hand_batch(2, seed)
        clean = class_log_probabilities(step.model(batch.images)).detach()
        noisy = class_log_probabilities(step.peers[0].model(batch.images)).detach()
        scores += noisiness_scores(clean, noisy, batch.labels[:, 0].long(), 16.0).tolist()
        step(batch, _hand_batch(2, 9), True)
    assert step.noisiness.state_dict()["noisiness"].tolist() == pytest.approx(scores[-3:], rel=1e-5)


def test_a_memory_of_the_earlier_per_batch_dast_is_refused():
    with pytest.raises(UserError, match=r"last\.pt: its dast state"):
        _step(2).noisiness.load_state_dict({"divergences": torch.zeros(3)}, CPU)


# ------------------------------------------------------------------------------------------ in a run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_methods_dast") / "prepared"
    write_prepared(folder)
    return folder


DAST = ("method.name=dast", "method.dast_queue=3", "method.dast_select_share=0.5")


def _build(prepared: Path, tmp_path: Path) -> SegmentationRun:
    return build(config(prepared, *DAST), tmp_path)


def test_a_dast_run_checkpoints_its_queue_and_resumes_bit_for_bit(prepared, tmp_path):
    straight = _build(prepared, tmp_path)
    (peer,) = straight.peers
    assert peer.model is not straight.model
    assert peer.optimizer is not straight.optimizer
    assert straight.step.teacher is None
    assert straight.cfg.method.trains_on_meta_batch
    straight.begin_epoch(0)
    for _ in range(3):
        straight.train_step()
    stats = straight.running_stats()
    assert {"noisiness", "severe_share", "slight_share", "noisy_branch_loss", "meta_loss"} <= set(stats)

    first = _build(prepared, tmp_path)
    first.begin_epoch(0)
    first.train_step()
    state = {
        **first.state_dict(),
        "model": first.model.state_dict(),
        "optimizer": first.optimizer.state_dict(),
    }
    state = through_torch_save(state)
    assert len(state["dast"]["noisiness"]) == first.cfg.train.batch_size

    resumed = _build(prepared, tmp_path)
    resumed.model.load_state_dict(state["model"])
    resumed.optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state)
    resumed.begin_epoch(0)
    for _ in range(2):
        resumed.train_step()
    assert torch.equal(
        resumed.step.noisiness.state_dict()["noisiness"], straight.step.noisiness.state_dict()["noisiness"]
    )
    for mine, theirs in ((resumed.model, straight.model), (resumed.peers[0].model, peer.model)):
        for name, tensor in mine.state_dict().items():
            assert torch.equal(tensor, theirs.state_dict()[name]), name
    assert "peers" not in resumed.final_state()


def test_dast_evaluates_the_mean_of_its_two_branches(prepared, tmp_path):
    run = _build(prepared, tmp_path)
    run.begin_epoch(0)
    run.train_step()
    final = run.final_state()["model"]
    assert {key.split(".")[1] for key in final} == {"0", "1"}  # networks.0.*, networks.1.*
    assert isinstance(run.evaluated, LogitMean)
    images = run.train_set.images[:2]
    clean, noisy = run.model.eval(), run.peers[0].model.eval()
    torch.testing.assert_close(run.evaluated.eval()(images), (clean(images) + noisy(images)) / 2)
    # last.pt holds the first network and its peer apart: evaluate composes them into the same weights
    last = {"model": run.model.state_dict(), "peers": [{"model": run.peers[0].model.state_dict()}]}
    composed = evaluated_weights(last, 2)
    assert composed.keys() == final.keys()
    assert all(torch.equal(composed[key], final[key]) for key in final)
    assert evaluated_weights({"model": final}, 2) is final  # final.pt: as saved
