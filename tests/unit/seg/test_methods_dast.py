"""The dast method (Yang et al., IEEE JBHI 2022): its divergence, its ranking rule, its step and its resume.

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
from mlbseg.seg.selection import (
    class_log_probabilities,
    kl_divergence_map,
    network_divergence,
    ranked_noisy,
)
from mlbseg.seg.step import Batch, PeerNetwork, SegmentationStep
from mlbseg.seg.trainer import SegmentationRun

from ._prepared import write_prepared
from ._runs import build, config, through_torch_save

pytestmark = pytest.mark.usefixtures("restore_determinism", "one_thread")

LR = 0.1


# ------------------------------------------------------------------------------------------ the rules


def test_binary_class_log_probabilities_are_background_then_foreground():
    logits = torch.tensor([-2.0, 0.0, 3.0]).view(1, 1, 1, 3)
    log_probs = class_log_probabilities(logits)
    assert log_probs.shape == (1, 2, 1, 3)
    foreground = torch.sigmoid(logits)
    torch.testing.assert_close(log_probs.exp(), torch.cat([1 - foreground, foreground], dim=1))
    multi = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(class_log_probabilities(multi).exp().sum(dim=1), torch.ones(2, 4, 4))


def test_the_divergence_is_the_mean_symmetric_kl_of_the_two_predictions():
    # one slice, two pixels, two classes: p = (0.5, 0.5), (0.9, 0.1); q = (0.5, 0.5), (0.6, 0.4)
    p = torch.tensor([[0.5, 0.9], [0.5, 0.1]]).view(1, 2, 1, 2).log()
    q = torch.tensor([[0.5, 0.6], [0.5, 0.4]]).view(1, 2, 1, 2).log()
    kl_pq = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    kl_qp = 0.6 * math.log(0.6 / 0.9) + 0.4 * math.log(0.4 / 0.1)
    assert kl_divergence_map(p, q).flatten().tolist() == pytest.approx([0.0, kl_pq], abs=1e-6)
    expected = (0.0 + 0.5 * (kl_pq + kl_qp)) / 2  # the pixels' mean
    assert float(network_divergence(p, q)) == pytest.approx(expected, rel=1e-5)
    assert float(network_divergence(q, p)) == pytest.approx(expected, rel=1e-5)
    assert float(network_divergence(p, p)) == 0.0


def test_the_newest_batch_is_noisy_when_among_the_top_share_of_the_queue():
    # share 0.4 of 5 scores: the 2 largest are noisy
    assert bool(ranked_noisy(torch.tensor([1.0, 5.0, 3.0, 2.0, 4.0]), 0.4))  # 4: second largest
    assert not bool(ranked_noisy(torch.tensor([1.0, 5.0, 4.0, 2.0, 3.0]), 0.4))  # 3: third
    assert bool(ranked_noisy(torch.tensor([1.0, 2.0, 3.0, 4.0, 9.0]), 0.4))  # the largest
    assert not bool(ranked_noisy(torch.tensor([9.0]), 0.2))  # a queue under 1/share ranks nothing noisy
    assert not bool(ranked_noisy(torch.tensor([1.0, 2.0, 3.0, 4.0]), 0.2))
    assert bool(ranked_noisy(torch.full((5,), 2.0), 0.4))  # equal scores do not count as above
    assert not bool(ranked_noisy(torch.tensor([1.0, 5.0, 3.0, 2.0, 4.0]), 0.0))


def test_the_dast_parameters_are_checked():
    for key, value in (
        ("dast_queue", 0),
        ("dast_noisy_share", 1.0),
        ("dast_noisy_share", -0.1),
        ("dast_consistency_weight", -1.0),
    ):
        with pytest.raises(UserError, match=rf"method\.{key}"):
            check_config(SegConfig(method=MethodConfig(name="dast", **{key: value})))
    check_config(SegConfig(method=MethodConfig(name="dast")))


# ------------------------------------------------------------------------------------------ the step


def _net(classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    channels = 1 if classes == 2 else classes
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, channels, 3, padding=1))


def _step(classes: int, **method: float) -> SegmentationStep:
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
    )


def _hand_batch(classes: int, seed: int = 1) -> Batch:
    """Two 8×8 slices: a square of class 1 with (K > 2) an inner square of the top class."""
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    labels = torch.zeros(2, 1, 8, 8)
    labels[:, :, 2:6, 2:6] = 1
    if classes > 2:
        labels[:, :, 3:5, 3:5] = classes - 1
    return Batch(images, labels, labels.clone(), None)


def _sgd(model: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor]) -> None:
    """One plain SGD step of ``model`` (a copy) on the loss that ``loss_of(model)`` returns."""
    gradients = torch.autograd.grad(loss_of(model), list(model.parameters()))
    with torch.no_grad():
        for param, grad in zip(model.parameters(), gradients, strict=True):
            param -= LR * grad


def _kl_to(model: nn.Module, peer_log_probs: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return kl_divergence_map(peer_log_probs, class_log_probabilities(model(images))).mean()


def _assert_same(model: nn.Module, expected: nn.Module) -> None:
    for param, value in zip(model.parameters(), expected.parameters(), strict=True):
        torch.testing.assert_close(param.detach(), value.detach(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("noisy", [False, True])
def test_the_dast_step_trains_on_labels_when_clean_on_consistency_when_noisy(classes, noisy):
    step = _step(classes, dast_noisy_share=0.2, dast_consistency_weight=0.5)
    # nine earlier scores far above (the batch ranks clean) or at 0 (it ranks noisy: 2 of 10 are)
    step.load_dast_state_dict({"divergences": torch.full((9,), 0.0 if noisy else 1e9)})
    batch, meta = _hand_batch(classes), _hand_batch(classes, seed=2)
    first, peer = copy.deepcopy(step.model), copy.deepcopy(step.peers[0].model)
    first_log_probs = class_log_probabilities(first(batch.images)).detach()
    peer_log_probs = class_log_probabilities(peer(batch.images)).detach()
    divergence = network_divergence(first_log_probs, peer_log_probs)
    assert float(divergence) > 0
    if noisy:
        _sgd(first, lambda net: 0.5 * _kl_to(net, peer_log_probs, batch.images))
        _sgd(peer, lambda net: 0.5 * _kl_to(net, first_log_probs, batch.images))
    else:
        _sgd(first, lambda net: step.labels.costs(net(batch.images), batch.labels).mean())
        _sgd(peer, lambda net: step.labels.costs(net(batch.images), batch.labels).mean())
    _sgd(first, lambda net: step.labels.costs(net(meta.images), meta.labels).mean())  # the clean data
    stats = step(batch, meta, meta_weighting=True)
    _assert_same(step.model, first)
    _assert_same(step.peers[0].model, peer)
    assert float(stats["noisy_batch"]) == float(noisy)
    assert float(stats["divergence"]) == pytest.approx(float(divergence), rel=1e-5)
    assert float(stats["meta_loss"]) > 0


def test_in_warm_up_every_batch_trains_on_its_labels():
    step, reference = _step(2), _step(2)
    step.load_dast_state_dict({"divergences": torch.zeros(9)})  # would rank the batch noisy
    reference.load_dast_state_dict({"divergences": torch.full((9,), 1e9)})  # ranks it clean
    warm = step(_hand_batch(2), _hand_batch(2, seed=2), meta_weighting=False)
    clean = reference(_hand_batch(2), _hand_batch(2, seed=2), meta_weighting=True)
    assert float(warm["noisy_batch"]) == 0.0 == float(clean["noisy_batch"])
    for mine, theirs in zip(step.model.parameters(), reference.model.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    assert len(step.dast_state_dict()["divergences"]) == 10  # the queue still fills


def test_the_queue_keeps_the_last_dast_queue_divergences_oldest_first():
    step = _step(2, dast_queue=3)
    assert step.dast_state_dict() == {"divergences": None}
    scores = [float(step(_hand_batch(2, seed), _hand_batch(2, 9), True)["divergence"]) for seed in range(5)]
    assert step.dast_state_dict()["divergences"].tolist() == pytest.approx(scores[-3:])


# ------------------------------------------------------------------------------------------ in a run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_methods_dast") / "prepared"
    write_prepared(folder)
    return folder


DAST = ("method.name=dast", "method.dast_queue=3", "method.dast_noisy_share=0.9")


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
    assert {"divergence", "noisy_batch", "meta_loss"} <= set(stats)

    first = _build(prepared, tmp_path)
    first.begin_epoch(0)
    first.train_step()
    state = {
        **first.state_dict(),
        "model": first.model.state_dict(),
        "optimizer": first.optimizer.state_dict(),
    }
    state = through_torch_save(state)
    assert len(state["dast"]["divergences"]) == 1

    resumed = _build(prepared, tmp_path)
    resumed.model.load_state_dict(state["model"])
    resumed.optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state)
    resumed.begin_epoch(0)
    for _ in range(2):
        resumed.train_step()
    assert torch.equal(
        resumed.step.dast_state_dict()["divergences"], straight.step.dast_state_dict()["divergences"]
    )
    for mine, theirs in ((resumed.model, straight.model), (resumed.peers[0].model, peer.model)):
        for name, tensor in mine.state_dict().items():
            assert torch.equal(tensor, theirs.state_dict()[name]), name
    assert "peers" not in resumed.final_state()
