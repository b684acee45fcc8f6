"""The robust-loss methods (gce, mae, nr_dice, tloss) through SegmentationStep and SegmentationRun.

Each step trains on its loss of the noisy labels instead of the mean cost (no meta step, no views); the
T-Loss's ν is a parameter of the run: stepped by its optimizer, averaged and clipped with the network's
gradients, saved in the checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import torch._inductor.config  # imported while collecting, as in test_trainer.py
import torch.nn.functional as F
from torch import nn

from mlbseg.engine.distributed import SINGLE, Distributed
from mlbseg.errors import UserError
from mlbseg.seg.config import DataConfig, MethodConfig, SegConfig, check_config
from mlbseg.seg.losses import gce_loss, mae_loss, nr_dice_loss, t_loss
from mlbseg.seg.step import Batch, SegmentationStep, robust_loss_for
from mlbseg.seg.trainer import SegmentationRun

from ._prepared import write_prepared
from ._runs import build, config, through_torch_save

pytestmark = pytest.mark.usefixtures("restore_determinism", "one_thread")


def _step(method: MethodConfig, classes: int, *, dist: Distributed = SINGLE) -> SegmentationStep:
    """A conv net's step (no BatchNorm: a forward before the step gives the step's logits exactly)."""
    torch.manual_seed(0)
    channels = 1 if classes == 2 else classes
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, channels, 3, padding=1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = robust_loss_for(method)
    if loss is not None and list(loss.parameters()):
        optimizer.add_param_group({"params": list(loss.parameters()), "weight_decay": 0.0})
    return SegmentationStep(
        model,
        optimizer,
        method=method,
        data=DataConfig(flip_prob=0.0, rotation_degrees=0.0),
        grad_clip_norm=None,
        generator=torch.Generator().manual_seed(0),
        dist=dist,
        num_labels=classes,
        robust_loss=loss,
    )


def _hand_batch(classes: int) -> Batch:
    """Two 8×8 slices: a square of class 1 with (K > 2) an inner square of the top class."""
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(2, 1, 8, 8)
    labels[:, :, 2:6, 2:6] = 1
    if classes > 2:
        labels[:, :, 3:5, 3:5] = classes - 1
    return Batch(images, labels, labels.clone(), None)


def _maps(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Binary: the 0/1 map; K > 2: one-hot [N, K, h, w]."""
    if classes == 2:
        return labels
    return F.one_hot(labels[:, 0].long(), classes).permute(0, 3, 1, 2).float()


def _expected(name: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if name == "gce":
        return gce_loss(logits, targets, 0.7).mean()
    if name == "mae":
        return mae_loss(logits, targets).mean()
    if name == "nr_dice":
        return nr_dice_loss(logits, targets, 1.5).mean()
    return t_loss(logits, targets, torch.tensor(1.0)).mean()


@pytest.mark.parametrize("classes", [2, 3])
@pytest.mark.parametrize("name", ["gce", "mae", "nr_dice", "tloss"])
def test_the_step_trains_on_the_mean_robust_loss_with_the_papers_defaults(name, classes):
    step = _step(MethodConfig(name=name), classes)
    batch = _hand_batch(classes)
    with torch.no_grad():
        expected = _expected(name, step.model(batch.images), _maps(batch.labels, classes))
    before = [param.detach().clone() for param in step.model.parameters()]
    stats = step(batch, _hand_batch(classes), meta_weighting=True)
    assert float(stats["loss"]) == pytest.approx(float(expected), rel=1e-6)
    assert "meta_loss" not in stats
    assert "alpha_mean" not in stats
    assert ("tloss_nu" in stats) == (name == "tloss")
    assert any(not torch.equal(p, b) for p, b in zip(step.model.parameters(), before, strict=True))


@pytest.mark.parametrize("classes", [2, 3])
def test_gce_as_q_tends_to_zero_is_the_baselines_step(classes):
    gce = _step(MethodConfig(name="gce", gce_q=1e-7), classes)
    baseline = _step(MethodConfig(name="baseline"), classes)
    gce_stats = gce(_hand_batch(classes), _hand_batch(classes), meta_weighting=True)
    baseline_stats = baseline(_hand_batch(classes), _hand_batch(classes), meta_weighting=True)
    assert float(gce_stats["loss"]) == pytest.approx(float(baseline_stats["loss"]), rel=1e-5)
    for mine, theirs in zip(gce.model.parameters(), baseline.model.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-7)


def test_the_tloss_nu_starts_at_its_configured_value_and_takes_the_optimizers_step():
    step = _step(MethodConfig(name="tloss", tloss_nu=2.5), 2)
    loss = step.robust_loss
    assert float(loss.nu.detach()) == pytest.approx(2.5)
    batch = _hand_batch(2)
    logits = step.model(batch.images)
    (gradient,) = torch.autograd.grad(loss(logits, batch.labels), [loss.log_nu])
    eta = loss.log_nu.detach().clone()
    stats = step(batch, _hand_batch(2), meta_weighting=True)
    assert float(stats["tloss_nu"]) == pytest.approx(2.5)  # ν of the step's loss, before its update
    assert float(gradient) != 0.0
    torch.testing.assert_close(loss.log_nu.detach(), eta - 0.1 * gradient)  # SGD lr 0.1, no decay
    assert float(loss.nu.detach()) > 0


@dataclass(frozen=True)
class RecordingDistributed(Distributed):
    """One process that records which parameters a step averages its gradients over."""

    averaged: list[nn.Parameter] = field(default_factory=list)

    def average_gradients(self, parameters) -> None:
        self.averaged.extend(parameters)


def test_the_tloss_nu_gradient_is_averaged_with_the_networks():
    dist = RecordingDistributed()
    step = _step(MethodConfig(name="tloss"), 2, dist=dist)
    step(_hand_batch(2), _hand_batch(2), meta_weighting=True)
    averaged = {id(param) for param in dist.averaged}
    assert id(step.robust_loss.log_nu) in averaged
    assert {id(param) for param in step.model.parameters()} <= averaged


def test_the_robust_losses_parameters_are_checked():
    for key, value in (("gce_q", 0.0), ("gce_q", 1.5), ("nr_dice_gamma", 2.5), ("tloss_nu", 0.0)):
        with pytest.raises(UserError, match=rf"method\.{key}"):
            check_config(SegConfig(method=MethodConfig(name="gce", **{key: value})))


# ------------------------------------------------------------------------------------------ in a run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_methods_losses") / "prepared"
    write_prepared(folder)
    return folder


def _build(prepared: Path, tmp_path: Path, *overrides: str) -> SegmentationRun:
    return build(config(prepared, "method.name=tloss", *overrides), tmp_path)


def test_a_tloss_run_steps_nu_with_its_optimizer_and_resumes_bit_for_bit(prepared, tmp_path):
    straight = _build(prepared, tmp_path, "method.tloss_nu=3.0")
    group = straight.optimizer.param_groups[1]
    assert group["params"] == [straight.robust_loss.log_nu]
    assert group["weight_decay"] == 0.0
    assert straight.step.teacher is None
    assert not straight.cfg.method.uses_views
    straight.begin_epoch(0)
    for _ in range(3):
        straight.train_step()
    assert float(straight.robust_loss.nu.detach()) != pytest.approx(3.0)  # learnt
    assert math.isfinite(straight.running_stats()["tloss_nu"])

    first = _build(prepared, tmp_path, "method.tloss_nu=3.0")
    first.begin_epoch(0)
    first.train_step()
    state = {
        **first.state_dict(),
        "model": first.model.state_dict(),
        "optimizer": first.optimizer.state_dict(),
    }
    state = through_torch_save(state)
    assert set(state["robust_loss"]) == {"log_nu"}

    resumed = _build(prepared, tmp_path, "method.tloss_nu=3.0")
    resumed.model.load_state_dict(state["model"])
    resumed.optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state)
    resumed.begin_epoch(0)
    for _ in range(2):
        resumed.train_step()
    assert torch.equal(resumed.robust_loss.log_nu, straight.robust_loss.log_nu)
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, straight.model.state_dict()[name]), name
    assert torch.equal(resumed.final_state()["robust_loss"]["log_nu"], straight.robust_loss.log_nu)
