import dataclasses

import pytest
import torch

from mlbseg.config import load_config
from mlbseg.engine.config import OptimConfig, ScheduleConfig, check_shared_sections
from mlbseg.engine.optim import build_optimizer, build_scheduler, lr_factor
from mlbseg.errors import UserError
from mlbseg.meta.lookahead import optimizer_slots
from mlbseg.seg.config import SegConfig


def test_inverse_schedule_matches_the_reference():
    cfg = ScheduleConfig(name="inverse", decay_epochs=20)
    lrs = [0.005 * lr_factor(epoch, cfg, 100) for epoch in (0, 20, 100)]
    assert lrs == pytest.approx([0.005, 0.0025, 0.005 / 6])


def test_cosine_step_and_warmup():
    assert lr_factor(50, ScheduleConfig(name="cosine"), 100) == pytest.approx(0.5)
    step = ScheduleConfig(name="step", milestones=(2, 4), gamma=0.1)
    assert [lr_factor(e, step, 10) for e in (1, 2, 4)] == pytest.approx([1.0, 0.1, 0.01])
    warm = ScheduleConfig(name="constant", warmup_epochs=4)
    assert [lr_factor(e, warm, 10) for e in (0, 3, 4)] == pytest.approx([0.25, 1.0, 1.0])


def test_scheduler_steps_per_epoch():
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = build_scheduler(optimizer, ScheduleConfig(name="inverse", decay_epochs=1), epochs=5)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("name", "kind", "decoupled"),
    [("adam", torch.optim.Adam, False), ("adamw", torch.optim.AdamW, True)],
)
def test_build_optimizer_makes_adam_and_adamw_from_the_config(name, kind, decoupled):
    model = torch.nn.Linear(3, 2)
    cfg = OptimConfig(name=name, lr=0.002, weight_decay=0.01, betas=(0.8, 0.99), eps=1e-6)
    optimizer = build_optimizer(model, cfg)
    assert type(optimizer) is kind
    (group,) = optimizer.param_groups
    assert len(group["params"]) == 2
    assert (group["lr"], group["betas"], group["eps"]) == (0.002, (0.8, 0.99), 1e-6)
    assert (group["weight_decay"], group["decoupled_weight_decay"]) == (0.01, decoupled)
    assert not group["amsgrad"]
    slot = optimizer_slots(model, optimizer)["weight"]  # what the meta engine's virtual step reads
    assert (slot.lr, slot.beta1, slot.beta2, slot.eps) == (0.002, 0.8, 0.99, 1e-6)
    assert (slot.weight_decay, slot.decoupled) == (0.01, decoupled)


def test_build_optimizer_keeps_sgd_the_default():
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(model, OptimConfig(nesterov=True))
    assert type(optimizer) is torch.optim.SGD
    (group,) = optimizer.param_groups
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.005, 0.9, True)
    assert group["weight_decay"] == 5e-4


def test_optimizer_name_and_betas_are_checked():
    with pytest.raises(UserError, match=r"'name' must be one of \['sgd', 'adam', 'adamw'\]"):
        load_config(OptimConfig, None, ["name=rmsprop"])
    cfg = load_config(OptimConfig, None, ["name=adamw", "betas=[0.5, 0.9]", "eps=1e-6"])
    assert (cfg.name, cfg.betas, cfg.eps) == ("adamw", (0.5, 0.9), 1e-6)
    with pytest.raises(UserError, match=r"optim\.betas: must be two numbers"):
        build_optimizer(torch.nn.Linear(1, 1), OptimConfig(name="adam", betas=(0.9,)))


@pytest.mark.parametrize(
    ("override", "message"),
    [({"betas": (0.9, 1.0)}, r"optim\.betas: must be"), ({"eps": 0.0}, r"optim\.eps: must be")],
)
def test_adam_settings_are_range_checked_with_the_config(override, message):
    cfg = dataclasses.replace(SegConfig(), optim=OptimConfig(name="adam", **override))
    with pytest.raises(UserError, match=message):
        check_shared_sections(cfg)
    check_shared_sections(SegConfig())
