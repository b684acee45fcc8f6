"""The shared training loop (mlbseg.engine.trainer.train) driven by a tiny fake task on the CPU.

The fake run trains a ``torch.nn.Linear`` with SGD on batches drawn from its own generator, records every
call the loop makes on it, and can be told to fail or to be interrupted, so the tests see the loop's call
order, its run folder lifecycle, its checkpoints and its resume exactly.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

# Imported while collecting, not inside the first test: the Logbook's SummaryWriter, and torch's
# deterministic-algorithms switch of seed_everything (about 1.5 s, once per process).
import torch._inductor.config
import torch.utils.tensorboard
from matplotlib.figure import Figure
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlbseg.config import load_config, to_dict
from mlbseg.engine.checkpoint import load_checkpoint, save_checkpoint
from mlbseg.engine.config import OptimConfig, ScheduleConfig
from mlbseg.engine.lock import BUSY, is_locked, run_lock
from mlbseg.engine.optim import lr_factor
from mlbseg.engine.run_dir import CONFIG, FINAL, LAST
from mlbseg.engine.signals import Interrupted
from mlbseg.engine.trainer import Runtime, train
from mlbseg.errors import UserError

pytestmark = pytest.mark.usefixtures("restore_determinism")

ENGINE_KEYS = {"model", "optimizer", "scheduler", "epoch", "global_step", "world_size", "history", "config"}


# ----------------------------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class FakeTrain:
    device: str = "cpu"
    seed: int = 3
    deterministic: bool = True
    amp: bool = False
    epochs: int = 2
    log_every: int = 2
    steps: int = 5  # the fake task's steps per epoch


@dataclass(frozen=True)
class FakeConfig:
    name: str = "fake"
    train: FakeTrain = field(default_factory=FakeTrain)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=0.1, weight_decay=0.0))
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(decay_epochs=1.0))


def make_cfg(**train: Any) -> FakeConfig:
    return FakeConfig(train=FakeTrain(**train))


# ------------------------------------------------------------------------------------------------ the task


class FakeRun:
    """A TaskRun around ``Linear(3, 1)``: learns y = x·w on batches from a private generator."""

    def __init__(self, task: FakeTask, cfg: FakeConfig, runtime: Runtime) -> None:
        self.task, self.cfg, self.runtime = task, cfg, runtime
        self.model = runtime.place_model(torch.nn.Linear(3, 1))
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.optim.lr, momentum=0.9)
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.target = torch.tensor([[1.0], [-2.0], [0.5]])
        self.calls = 0  # train_step calls over the run's life (checkpointed)
        self.loss_total, self.steps_done = 0.0, 0

    def _log(self, *event: Any) -> None:
        self.task.events.append(event)

    def steps_in_epoch(self, epoch: int) -> int:
        return self.cfg.train.steps

    def begin_epoch(self, epoch: int) -> None:
        self._log("begin", epoch)
        self.loss_total, self.steps_done = 0.0, 0

    def train_step(self) -> None:
        if self.task.interrupt_at is not None and self.calls == self.task.interrupt_at:
            self.task.interrupt_at = None  # once
            raise Interrupted(signal.SIGTERM)
        self._log("step")
        self.task.step_lrs.append(self.optimizer.param_groups[0]["lr"])
        x = torch.randn(4, 3, generator=self.generator)
        loss = torch.nn.functional.mse_loss(self.model(x), x @ self.target)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        self.loss_total += loss.item()
        self.steps_done += 1
        self.calls += 1

    def running_stats(self) -> dict[str, float]:
        self._log("stats")
        stats = {"loss": self.loss_total / self.steps_done, "seen": float(self.steps_done)}
        self.task.stats.append(stats)
        return stats

    def end_epoch(self) -> dict[str, float]:
        self._log("end")
        return {"val_score": 10.0 + self.calls}

    def write_inputs(self) -> None:
        self._log("write_inputs")
        self.task.config_at_write_inputs = (self.runtime.run_dir / CONFIG).is_file()

    def state_dict(self) -> dict[str, Any]:
        self._log("state_dict")
        return {"generator": self.generator.get_state(), "calls": self.calls}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._log("load_state_dict")
        self.generator.set_state(state["generator"])
        self.calls = state["calls"]

    def tensorboard_figures(self, epoch: int) -> dict[str, Any]:
        self._log("figures", epoch)
        if epoch % 2:
            return {}
        figure = Figure(figsize=(1, 1))
        figure.subplots().plot([0, 1], [self.calls, 0])
        return {"calls": figure}

    def final_state(self) -> dict[str, Any]:
        self._log("final_state")
        return {"target": self.target.clone(), "calls": self.calls}


class FakeTask:
    """A Task whose check or build can be told to fail and whose run can be told to be interrupted."""

    def __init__(
        self, check_error: str | None = None, build_error: str | None = None, interrupt_at: int | None = None
    ) -> None:
        self.check_error, self.build_error, self.interrupt_at = check_error, build_error, interrupt_at
        self.events: list[tuple[Any, ...]] = []
        self.step_lrs: list[float] = []
        self.stats: list[dict[str, float]] = []
        self.builds = 0
        self.config_at_write_inputs: bool | None = None
        self.run: FakeRun | None = None

    def check_config(self, cfg: FakeConfig) -> None:
        if self.check_error:
            raise UserError(self.check_error)

    def build(self, cfg: FakeConfig, runtime: Runtime) -> FakeRun:
        self.builds += 1
        if self.build_error:
            raise UserError(self.build_error)
        self.run = FakeRun(self, cfg, runtime)
        return self.run


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open() as file:
        return list(csv.DictReader(file))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / FINAL)["model"]


# ----------------------------------------------------------------------------------------- before the start


def test_a_failing_config_check_leaves_no_run_folder(tmp_path):
    task = FakeTask(check_error="train.epochs: must be 1 or more")
    run_dir = tmp_path / "runs" / "run"
    with pytest.raises(UserError, match=r"train\.epochs"):
        train(task, make_cfg(), run_dir)
    assert not (tmp_path / "runs").exists()
    assert task.builds == 0


def test_a_failing_build_leaves_no_run_folder_and_the_same_command_then_works(tmp_path):
    task = FakeTask(build_error="prepared/manifest.json: not found")
    run_dir = tmp_path / "runs" / "run"
    cfg = make_cfg(epochs=1)
    with pytest.raises(UserError, match=r"manifest\.json"):
        train(task, cfg, run_dir)
    assert not (tmp_path / "runs").exists()
    task.build_error = None  # the data is there now
    assert train(task, cfg, run_dir) == run_dir
    assert (run_dir / FINAL).is_file()
    assert load_config(FakeConfig, run_dir / CONFIG) == cfg


def test_a_failing_build_leaves_an_existing_empty_folder_as_it_was(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(UserError):
        train(FakeTask(build_error="no data"), make_cfg(), run_dir)
    assert list(run_dir.iterdir()) == []


# ------------------------------------------------------------------------------------------- the epoch loop


def test_call_order_per_epoch_and_the_metrics_rows(tmp_path):
    task = FakeTask()
    run_dir = tmp_path / "run"
    cfg = make_cfg(epochs=2, steps=5, log_every=2)
    train(task, cfg, run_dir)
    assert task.config_at_write_inputs is True  # write_inputs runs once the folder is claimed
    epoch = ["step", "step", "stats", "step", "step", "stats", "step", "stats", "end"]
    expected = [("write_inputs",)]
    for e in range(2):
        expected += [("begin", e), *[(name,) for name in epoch], ("figures", e + 1), ("state_dict",)]
    expected += [("final_state",)]
    assert task.events == expected
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [image.step for image in events.Images("figures/calls")] == [2]  # the run's figure of epoch 2

    rows = read_rows(run_dir)
    assert list(rows[0]) == ["epoch", "lr", "loss", "seen", "val_score", "seconds"]
    last_stats = [task.stats[2], task.stats[5]]  # the stats of each epoch's last step
    for e, row in enumerate(rows):
        assert int(row["epoch"]) == e + 1
        assert float(row["lr"]) == pytest.approx(0.1 * lr_factor(e, cfg.schedule, 2))
        assert float(row["loss"]) == pytest.approx(last_stats[e]["loss"])
        assert float(row["seen"]) == 5.0  # the last step's statistics, over the whole epoch
        assert float(row["val_score"]) == 10.0 + 5 * (e + 1)
        assert float(row["seconds"]) > 0.0
    assert (run_dir / "tensorboard").is_dir()
    assert any((run_dir / "tensorboard" / "hparams").iterdir())  # the config and final metrics


def test_log_every_larger_than_the_epoch_still_logs_the_last_step(tmp_path):
    task = FakeTask()
    train(task, make_cfg(epochs=1, steps=3, log_every=50), tmp_path / "run")
    names = [event[0] for event in task.events]
    assert names.count("stats") == 1
    assert names.index("stats") == names.index("end") - 1
    assert float(read_rows(tmp_path / "run")[0]["seen"]) == 3.0


@pytest.mark.parametrize(
    "schedule",
    [
        ScheduleConfig(name="inverse", decay_epochs=1.0),
        ScheduleConfig(name="step", milestones=(2,), gamma=0.5, warmup_epochs=2),
        ScheduleConfig(name="cosine"),
    ],
)
def test_the_lr_schedule_steps_once_per_epoch(tmp_path, schedule):
    task = FakeTask()
    cfg = dataclasses.replace(make_cfg(epochs=4, steps=3, log_every=3), schedule=schedule)
    train(task, cfg, tmp_path / "run")
    expected = [0.1 * lr_factor(e, schedule, 4) for e in range(4)]
    assert [float(row["lr"]) for row in read_rows(tmp_path / "run")] == pytest.approx(expected)
    assert task.step_lrs == pytest.approx([lr for lr in expected for _ in range(3)])


# ------------------------------------------------------------------------------------------- checkpoints


def test_last_and_final_checkpoints_hold_the_documented_keys(tmp_path):
    task = FakeTask()
    run_dir = tmp_path / "run"
    cfg = make_cfg(epochs=2, steps=3)
    train(task, cfg, run_dir)
    last = load_checkpoint(run_dir / LAST)
    assert set(last) == ENGINE_KEYS | {"generator", "calls"}
    assert last["epoch"] == 2
    assert last["global_step"] == 6
    assert last["world_size"] == 1
    assert last["calls"] == 6
    assert last["config"] == to_dict(cfg)
    assert [row["epoch"] for row in last["history"]] == [1, 2]
    assert set(last["model"]) == {"weight", "bias"}
    assert last["scheduler"]["last_epoch"] == 2
    assert torch.equal(last["generator"], task.run.generator.get_state())

    final = load_checkpoint(run_dir / FINAL)
    assert set(final) == {"model", "target", "calls", "epoch", "config"}
    assert final["epoch"] == 2
    assert final["config"] == to_dict(cfg)
    assert final["calls"] == 6
    for name, tensor in task.run.model.state_dict().items():
        assert torch.equal(final["model"][name], tensor)
        assert torch.equal(last["model"][name], tensor)


# ------------------------------------------------------------------------------------------------ resume


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    cfg = make_cfg(epochs=4, steps=3)
    straight = tmp_path / "straight"
    train(FakeTask(), cfg, straight)

    run_dir = tmp_path / "run"
    task = FakeTask(interrupt_at=2 * 3 + 1)  # the second step of the third epoch
    with pytest.raises(Interrupted) as caught:
        train(task, cfg, run_dir)
    assert caught.value.signum == signal.SIGTERM
    assert caught.value.hint == f"the same command with --resume --run-dir {run_dir}"
    assert not is_locked(run_dir)
    assert load_checkpoint(run_dir / LAST)["epoch"] == 2
    assert not (run_dir / FINAL).exists()
    assert [row["epoch"] for row in read_rows(run_dir)] == ["1", "2"]

    resumed = FakeTask()
    train(resumed, cfg, run_dir, resume=True)
    assert resumed.events[:3] == [("write_inputs",), ("load_state_dict",), ("begin", 2)]
    assert [event for event in resumed.events if event[0] == "begin"] == [("begin", 2), ("begin", 3)]
    for name, tensor in weights(straight).items():
        assert torch.equal(weights(run_dir)[name], tensor), name
    rows, straight_rows = read_rows(run_dir), read_rows(straight)
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4"]
    assert [row["loss"] for row in rows] == [row["loss"] for row in straight_rows]
    assert [row["lr"] for row in rows] == [row["lr"] for row in straight_rows]
    assert load_checkpoint(run_dir / LAST)["global_step"] == 12


def test_a_run_interrupted_in_its_first_epoch_follows_the_hint_to_a_fresh_start(tmp_path):
    cfg = make_cfg(epochs=2, steps=3)
    straight = tmp_path / "straight"
    train(FakeTask(), cfg, straight)

    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted) as caught:
        train(FakeTask(interrupt_at=1), cfg, run_dir)
    assert "--resume" in caught.value.hint
    assert not (run_dir / LAST).exists()
    task = FakeTask()
    train(task, cfg, run_dir, resume=True)  # nothing to resume yet: it starts again
    assert ("load_state_dict",) not in task.events
    for name, tensor in weights(straight).items():
        assert torch.equal(weights(run_dir)[name], tensor), name
    assert [row["epoch"] for row in read_rows(run_dir)] == ["1", "2"]


def test_resume_refuses_a_different_config(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted):
        train(FakeTask(interrupt_at=4), make_cfg(epochs=3, steps=3), run_dir)
    before = (run_dir / LAST).read_bytes()
    with pytest.raises(UserError, match=r"these keys differ: train\.epochs"):
        train(FakeTask(), make_cfg(epochs=5, steps=3), run_dir, resume=True)
    assert (run_dir / LAST).read_bytes() == before
    assert not is_locked(run_dir)


def _one_more_parameter(state):
    group = state["optimizer"]["param_groups"][0]
    group["params"] = [*group["params"], len(group["params"])]
    return state


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (lambda state: {**state, "world_size": 2}, "written by 2 process"),
        # e.g. a last.pt written before smp encoders lost their unused last stage: one more parameter tensor
        (_one_more_parameter, r"last\.pt: its weights or optimizer state do not fit .*new folder"),
    ],
    ids=["world_size", "optimizer_state"],
)
def test_resume_refuses_a_checkpoint_that_does_not_fit_in_one_line(tmp_path, tamper, message):
    run_dir = tmp_path / "run"
    cfg = make_cfg(epochs=3, steps=2)
    with pytest.raises(Interrupted):
        train(FakeTask(interrupt_at=3), cfg, run_dir)
    save_checkpoint(tamper(load_checkpoint(run_dir / LAST)), run_dir / LAST)
    before = (run_dir / LAST).read_bytes()
    with pytest.raises(UserError, match=message) as caught:
        train(FakeTask(), cfg, run_dir, resume=True)
    assert "\n" not in str(caught.value)
    assert (run_dir / LAST).read_bytes() == before
    assert not is_locked(run_dir)


# ----------------------------------------------------------------------------------- the run folder's lock


def test_a_run_whose_lock_is_held_is_refused_before_anything_is_built(tmp_path):
    run_dir = tmp_path / "run"
    task = FakeTask()
    with run_lock(run_dir), pytest.raises(UserError, match=re.escape(BUSY)):
        train(task, make_cfg(), run_dir)
    assert task.builds == 0
    assert {entry.name for entry in run_dir.iterdir()} == {".lock"}


def test_a_lock_taken_between_the_check_and_the_claim_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    holder = run_lock(run_dir)

    class Racing(FakeTask):
        def build(self, cfg, runtime):
            holder.__enter__()  # another process claims the folder while this one builds
            return super().build(cfg, runtime)

    task = Racing()
    try:
        with pytest.raises(UserError, match=re.escape(BUSY)):
            train(task, make_cfg(), run_dir)
    finally:
        holder.__exit__(None, None, None)
    assert ("write_inputs",) not in task.events
    assert not (run_dir / LAST).exists()


def test_a_resume_of_a_locked_run_is_refused_and_leaves_it_alone(tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_cfg(epochs=1, steps=2)
    train(FakeTask(), cfg, run_dir)
    before = (run_dir / LAST).read_bytes()
    with run_lock(run_dir), pytest.raises(UserError, match=re.escape(BUSY)):
        train(FakeTask(), cfg, run_dir, resume=True)
    assert (run_dir / LAST).read_bytes() == before


# --------------------------------------------------------------------------------------------- overwrite


def test_overwrite_replaces_a_finished_run(tmp_path):
    run_dir = tmp_path / "run"
    train(FakeTask(), make_cfg(epochs=2, steps=2, seed=1), run_dir)
    (run_dir / "notes.txt").write_text("left by the old run")
    new = make_cfg(epochs=1, steps=3, seed=2)
    with pytest.raises(UserError, match="holds a run"):
        train(FakeTask(), new, run_dir)
    assert load_config(FakeConfig, run_dir / CONFIG).train.seed == 1

    train(FakeTask(), new, run_dir, overwrite=True)
    assert load_config(FakeConfig, run_dir / CONFIG) == new
    assert not (run_dir / "notes.txt").exists()
    assert [row["epoch"] for row in read_rows(run_dir)] == ["1"]
    assert load_checkpoint(run_dir / LAST)["global_step"] == 3
    assert load_checkpoint(run_dir / FINAL)["config"] == to_dict(new)
    assert [entry.name for entry in tmp_path.iterdir()] == ["run"]  # no `.run.*.old` left behind
    assert not is_locked(run_dir)


def test_a_failed_build_with_overwrite_keeps_the_old_run(tmp_path):
    run_dir = tmp_path / "run"
    train(FakeTask(), make_cfg(epochs=1, steps=2), run_dir)
    before = (run_dir / FINAL).read_bytes()
    with pytest.raises(UserError):
        train(FakeTask(build_error="no data"), make_cfg(epochs=1, steps=2, seed=9), run_dir, overwrite=True)
    assert (run_dir / FINAL).read_bytes() == before
    assert load_config(FakeConfig, run_dir / CONFIG).train.seed == 3
