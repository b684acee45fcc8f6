"""The selection and correction methods: coteaching, trinet and clslsr (rules, step, run, resume).

The rules (mlbseg.seg.selection) are checked on hand-made tensors; the step on tiny conv nets without
BatchNorm (a forward before the step gives the step's logits exactly), with SGD lr 0.1 and no clipping, so
that a network's update is exactly −0.1 × the gradient of the loss it should have trained on.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch._inductor.config  # imported while collecting, as in test_trainer.py
from torch import nn

from mlbseg.errors import UserError
from mlbseg.seg.config import DataConfig, MethodConfig, SegConfig, check_config
from mlbseg.seg.losses import pixel_cross_entropy
from mlbseg.seg.peers import PeerNetwork
from mlbseg.seg.selection import (
    confident_label_errors,
    coteaching_masks,
    forget_rate,
    masked_mean,
    small_loss_mask,
    smoothed_targets,
    trinet_masks,
)
from mlbseg.seg.step import Batch, SegmentationStep
from mlbseg.seg.trainer import SegmentationRun

from ._prepared import write_prepared
from ._runs import build, config, through_torch_save

pytestmark = pytest.mark.usefixtures("restore_determinism", "one_thread")

LR = 0.1


# ------------------------------------------------------------------------------------------ the rules


def test_the_forget_rate_ramps_linearly_to_its_final_value_over_t_k_epochs():
    rates = [forget_rate(epoch, final_rate=0.3, ramp_epochs=10) for epoch in range(13)]
    assert rates[0] == 0.0
    assert rates[5] == pytest.approx(0.15)
    assert rates[10:] == [pytest.approx(0.3)] * 3
    assert all(later > earlier for earlier, later in itertools.pairwise(rates[:11]))
    assert forget_rate(0, final_rate=0.3, ramp_epochs=0) == 0.3


def test_the_small_loss_mask_keeps_exactly_the_cheapest_share():
    costs = torch.tensor([[0.9, 0.1, 0.5, 0.3], [0.2, 0.8, 0.7, 0.4]])
    mask = small_loss_mask(costs, 0.75)  # 6 of 8
    assert mask.tolist() == [[False, True, True, True], [True, False, True, True]]
    assert small_loss_mask(costs, 0.01).sum() == 1  # at least one pixel
    ties = small_loss_mask(torch.zeros(4), 0.5)
    assert ties.tolist() == [True, True, False, False]  # equal costs: the earlier ones


def test_coteaching_trains_each_network_on_its_peers_small_loss_pixels():
    costs = torch.tensor([0.1, 0.9, 0.2, 0.8])
    peer = torch.tensor([0.7, 0.1, 0.6, 0.2])
    mine, theirs = coteaching_masks(costs, peer, 0.5)
    assert mine.tolist() == [False, True, False, True]  # the peer's small-loss pixels
    assert theirs.tolist() == [True, False, True, False]


def test_trinet_trains_each_network_on_the_pixels_its_two_peers_agree_on_with_small_loss():
    costs = [
        torch.tensor([0.1, 0.2, 0.3, 0.9]),
        torch.tensor([0.1, 0.9, 0.2, 0.3]),
        torch.tensor([0.9, 0.1, 0.2, 0.3]),
    ]
    predictions = [
        torch.tensor([1, 0, 1, 0]),
        torch.tensor([1, 0, 0, 0]),
        torch.tensor([1, 1, 0, 0]),
    ]
    masks = trinet_masks(costs, predictions, 0.75)
    # small losses: net 0 -> {0, 1, 2}, net 1 -> {0, 2, 3}, net 2 -> {1, 2, 3}
    assert masks[0].tolist() == [False, False, True, True]  # peers 1, 2: agree on {0, 2, 3}, small {2, 3}
    assert masks[1].tolist() == [False] * 4  # peers 0, 2: agree on {0, 3}, both small on {1, 2}
    assert masks[2].tolist() == [True, False, False, False]  # peers 0, 1: agree on {0, 1, 3}, small {0, 2}


def test_masked_mean_is_the_mean_over_the_selected_pixels_and_zero_for_none():
    costs = torch.tensor([1.0, 2.0, 3.0, 6.0])
    assert float(masked_mean(costs, torch.tensor([True, False, True, True]))) == pytest.approx(10 / 3)
    assert float(masked_mean(costs, torch.zeros(4, dtype=torch.bool))) == 0.0


def test_confident_learning_flags_the_pixels_confidently_of_another_class():
    # 1 slice, 2×3 pixels, K = 3; labels and probabilities chosen so thresholds are easy:
    labels = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    probs = torch.tensor(
        [
            [[0.8, 0.2, 0.1], [0.3, 0.1, 0.1]],  # class 0: t0 = mean(0.8, 0.2) = 0.5
            [[0.1, 0.7, 0.8], [0.4, 0.2, 0.1]],  # class 1: t1 = mean(0.8, 0.4) = 0.6
            [[0.1, 0.1, 0.1], [0.3, 0.7, 0.8]],  # class 2: t2 = mean(0.7, 0.8) = 0.75
        ]
    )[None]
    errors = confident_label_errors(probs, labels)
    # (0,0): label 0, p0 0.8 ≥ t0: correct. (0,1): label 0, p1 0.7 ≥ t1: error (class 1).
    # (0,2): label 1, p1 0.8: correct. (1,0): label 1, nothing confident: kept.
    # (1,1): label 2, p2 0.7 < t2 and nothing else: kept. (1,2): label 2, p2 0.8: correct.
    assert errors.tolist() == [[[False, True, False], [False, False, False]]]


def test_a_class_that_no_pixel_is_labelled_with_is_never_confident():
    labels = torch.zeros(1, 1, 2, dtype=torch.long)
    probs = torch.tensor([[[[0.9, 0.4]], [[0.1, 0.6]]]])  # class 1 would look confident at pixel 1
    assert not confident_label_errors(probs, labels).any()


def test_spatial_label_smoothing_changes_only_the_flagged_pixels():
    labels = torch.tensor([[[0, 2]]])
    errors = torch.tensor([[[False, True]]])
    targets = smoothed_targets(labels, errors, 3, 0.25)
    assert targets[0, :, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert targets[0, :, 0, 1].tolist() == pytest.approx([0.125, 0.125, 0.75])
    binary = smoothed_targets(torch.tensor([[[1, 0]]]), torch.tensor([[[True, True]]]), 2, 0.25)
    assert binary[0, 1, 0].tolist() == [0.75, 0.25]  # foreground target 1 -> 0.75, 0 -> 0.25


# ------------------------------------------------------------------------------------------ the step


def _net(classes: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    channels = 1 if classes == 2 else classes
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, channels, 3, padding=1))


def _step(name: str, classes: int, **method: float) -> SegmentationStep:
    config = MethodConfig(name=name, **method)
    models = [_net(classes, seed) for seed in range(config.networks)]
    optimizers = [torch.optim.SGD(model.parameters(), lr=LR) for model in models]
    return SegmentationStep(
        models[0],
        optimizers[0],
        method=config,
        data=DataConfig(flip_prob=0.0, rotation_degrees=0.0),
        grad_clip_norm=None,
        generator=torch.Generator().manual_seed(0),
        num_labels=classes,
        peers=[
            PeerNetwork(model, optimizer) for model, optimizer in zip(models[1:], optimizers[1:], strict=True)
        ],
    )


def _hand_batch(classes: int) -> Batch:
    """Two 8×8 slices: a square of class 1 with (K > 2) an inner square of the top class."""
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(2, 1, 8, 8)
    labels[:, :, 2:6, 2:6] = 1
    labels[:, :, 0, :3] = 1  # a strip of wrong foreground
    if classes > 2:
        labels[:, :, 3:5, 3:5] = classes - 1
    return Batch(images, labels, labels.clone(), None)


def _expected_update(model: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    gradients = torch.autograd.grad(loss, list(model.parameters()))
    return [param.detach() - LR * grad for param, grad in zip(model.parameters(), gradients, strict=True)]


def _assert_params(model: nn.Module, expected: list[torch.Tensor]) -> None:
    for param, value in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(param.detach(), value, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_coteaching_step_updates_each_network_on_its_peers_selection(classes):
    step = _step("coteaching", classes, forget_rate=0.25, forget_ramp_epochs=0)
    step.begin_epoch(0)
    assert step.keep_share == pytest.approx(0.75)
    batch = _hand_batch(classes)
    first, peer = step.model, step.peers[0].model
    costs, peer_costs = step.labels.costs(first(batch.images), batch.labels), None
    peer_costs = step.labels.costs(peer(batch.images), batch.labels)
    kept_by_peer = small_loss_mask(peer_costs, 0.75)
    kept_by_first = small_loss_mask(costs, 0.75)
    assert int(kept_by_peer.sum()) == int(0.75 * costs.numel())
    assert not torch.equal(kept_by_peer, kept_by_first)  # the test can tell whose selection was used
    expected_first = _expected_update(first, masked_mean(costs, kept_by_peer))
    expected_peer = _expected_update(peer, masked_mean(peer_costs, kept_by_first))
    stats = step(batch, _hand_batch(classes), meta_weighting=True)
    _assert_params(first, expected_first)
    _assert_params(peer, expected_peer)
    assert float(stats["selected_share"]) == pytest.approx(0.75, abs=1 / costs.numel())
    assert "meta_loss" not in stats


def test_the_trinet_step_updates_each_network_on_the_pixels_of_the_other_two():
    step = _step("trinet", 2, forget_rate=0.5, forget_ramp_epochs=0)
    step.begin_epoch(3)
    batch = _hand_batch(2)
    models = [step.model, *(peer.model for peer in step.peers)]
    logits = [model(batch.images) for model in models]
    costs = [step.labels.costs(value, batch.labels) for value in logits]
    predictions = [(value.detach() > 0).float() for value in logits]
    masks = trinet_masks(costs, predictions, 0.5)
    expected = [_expected_update(m, masked_mean(c, k)) for m, c, k in zip(models, costs, masks, strict=True)]
    step(batch, _hand_batch(2), meta_weighting=True)
    for model, values in zip(models, expected, strict=True):
        _assert_params(model, values)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_clslsr_step_trains_on_labels_smoothed_at_the_confident_errors(classes):
    step = _step("clslsr", classes)
    batch = _hand_batch(classes)
    logits = step.model(batch.images)
    probs = logits.detach().sigmoid() if classes == 2 else logits.detach().softmax(dim=1)
    if classes == 2:
        probs = torch.cat([1 - probs, probs], dim=1)
    labels = batch.labels[:, 0].long()
    errors = confident_label_errors(probs, labels)
    assert errors.any()
    assert not errors.all()
    targets = smoothed_targets(labels, errors, classes, 0.25)
    targets = targets[:, 1:] if classes == 2 else targets
    expected = _expected_update(step.model, pixel_cross_entropy(logits, targets).mean())
    stats = step(batch, _hand_batch(classes), meta_weighting=True)
    _assert_params(step.model, expected)
    assert float(stats["loss"]) > 0


def test_clslsr_in_warm_up_is_the_baseline_step():
    clslsr, baseline = _step("clslsr", 2), _step("baseline", 2)
    clslsr(_hand_batch(2), _hand_batch(2), meta_weighting=False)
    baseline(_hand_batch(2), _hand_batch(2), meta_weighting=False)
    for mine, theirs in zip(clslsr.model.parameters(), baseline.model.parameters(), strict=True):
        assert torch.equal(mine, theirs)


def test_a_step_refuses_the_wrong_number_of_networks():
    method = MethodConfig(name="trinet")
    model = _net(2, 0)
    with pytest.raises(ValueError, match="3 networks"):
        SegmentationStep(
            model,
            torch.optim.SGD(model.parameters(), lr=LR),
            method=method,
            data=DataConfig(),
            grad_clip_norm=None,
            generator=torch.Generator(),
        )


def test_the_selection_parameters_are_checked():
    for key, value in (("forget_rate", 1.0), ("forget_rate", -0.1), ("forget_ramp_epochs", -1)):
        with pytest.raises(UserError, match=rf"method\.{key}"):
            check_config(SegConfig(method=MethodConfig(name="coteaching", **{key: value})))
    with pytest.raises(UserError, match=r"method\.clslsr_epsilon"):
        check_config(SegConfig(method=MethodConfig(name="clslsr", clslsr_epsilon=1.0)))


# ------------------------------------------------------------------------------------------ in a run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_methods_selection") / "prepared"
    write_prepared(folder)
    return folder


def _build(prepared: Path, tmp_path: Path, *overrides: str) -> SegmentationRun:
    return build(config(prepared, *overrides), tmp_path)


def test_a_coteaching_run_has_a_peer_with_its_own_optimizer_and_resumes_bit_for_bit(prepared, tmp_path):
    straight = _build(prepared, tmp_path, "method.name=coteaching", "method.forget_ramp_epochs=1")
    (peer,) = straight.peers
    assert peer.model is not straight.model
    assert peer.optimizer is not straight.optimizer
    # initialised apart (BatchNorm's ones and zeros aside)
    assert any(
        not torch.equal(a, b)
        for a, b in zip(peer.model.parameters(), straight.model.parameters(), strict=True)
    )
    assert straight.step.teacher is None
    assert not straight.cfg.method.uses_views
    straight.optimizer.param_groups[0]["lr"] = 0.001  # as the schedule does between epochs
    straight.begin_epoch(1)
    assert peer.optimizer.param_groups[0]["lr"] == 0.001
    for _ in range(3):
        straight.train_step()
    assert straight.running_stats()["selected_share"] < 1.0

    first = _build(prepared, tmp_path, "method.name=coteaching", "method.forget_ramp_epochs=1")
    first.optimizer.param_groups[0]["lr"] = 0.001
    first.begin_epoch(1)
    first.train_step()
    state = {
        **first.state_dict(),
        "model": first.model.state_dict(),
        "optimizer": first.optimizer.state_dict(),
    }
    state = through_torch_save(state)
    assert len(state["peers"]) == 1
    assert set(state["peers"][0]) == {"model", "optimizer"}

    resumed = _build(prepared, tmp_path, "method.name=coteaching", "method.forget_ramp_epochs=1")
    resumed.model.load_state_dict(state["model"])
    resumed.optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state)
    resumed.begin_epoch(1)
    for _ in range(2):
        resumed.train_step()
    for mine, theirs in ((resumed.model, straight.model), (resumed.peers[0].model, peer.model)):
        for name, tensor in mine.state_dict().items():
            assert torch.equal(tensor, theirs.state_dict()[name]), name
    final = resumed.final_state()
    assert "model" not in final  # final.pt's model is the engine's: the first network's
    assert "peers" not in final


def test_a_trinet_run_builds_three_networks_and_averages_their_buffers(prepared, tmp_path):
    run = _build(prepared, tmp_path, "method.name=trinet")
    assert len(run.peers) == 2
    run.begin_epoch(0)
    run.train_step()
    metrics = run.end_epoch()
    assert 0.0 <= metrics["meta_dice"] <= 1.0
