import pytest
import torch

from mlbseg.engine.config import ScheduleConfig
from mlbseg.engine.optim import build_scheduler, lr_factor


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
