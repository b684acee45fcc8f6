"""The segmentation task on the engine (mlbseg.seg.trainer): SegmentationRun, slice_stream and TASK.

Runs are built from the shipped ``smoke`` config on the tiny prepared dataset of ``_prepared`` (16×16 slices,
5 train slices in 2 cases, 4 meta slices in 1 case) with the small model of ``_prepared.MODEL``, on the CPU.
"""

from __future__ import annotations

import csv
import io

import pytest
import torch

# Imported while collecting, not inside the first test: torch's deterministic-algorithms switch of
# seed_everything imports it (about 1.5 s, once per process).
import torch._inductor.config
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlbseg.engine.checkpoint import load_checkpoint
from mlbseg.engine.streams import IndexStream, MixedIndexStream
from mlbseg.errors import UserError
from mlbseg.prep.manifest import load_manifest
from mlbseg.seg import data as seg_data
from mlbseg.seg import trainer as seg_trainer
from mlbseg.seg.data import SliceSet, data_record
from mlbseg.seg.inference import validation_dice
from mlbseg.seg.step import SegmentationStep
from mlbseg.seg.trainer import TASK, SegmentationRun, SegmentationTask, slice_stream

from ._prepared import SIZE, VAL, num_slices, write_prepared
from ._runs import build, config

pytestmark = pytest.mark.usefixtures("restore_determinism", "one_thread")

TRAIN_SLICES = num_slices(0) + num_slices(1)  # Case00 and Case01
# The train slices whose (noisy) label has foreground: every slice but each case's first.
TRAIN_FOREGROUND = {1, 3, 4}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_trainer") / "prepared"
    write_prepared(folder)
    return folder


@pytest.fixture
def spy(monkeypatch):
    """Record every SegmentationStep call: sizes of batch and meta batch, the switch, and the stats."""
    calls: list[dict] = []
    original = SegmentationStep.__call__

    def recording(self, batch, meta, meta_weighting):
        stats = original(self, batch, meta, meta_weighting)
        calls.append(
            {
                "batch": batch.images.shape[0],
                "meta": meta.images.shape[0],
                "views": batch.views is not None,
                "meta_weighting": meta_weighting,
                "stats": {name: float(value) for name, value in stats.items()},
            }
        )
        return stats

    monkeypatch.setattr(SegmentationStep, "__call__", recording)
    return calls


# ------------------------------------------------------------------------------------------------ the task


def test_task_is_a_segmentation_task_whose_build_makes_a_run(prepared, tmp_path):
    assert isinstance(TASK, SegmentationTask)
    run = build(config(prepared), tmp_path)
    assert isinstance(run, SegmentationRun)
    assert len(run.train_set) == TRAIN_SLICES
    assert run.train_set.images.shape[-2:] == (SIZE, SIZE)
    assert next(run.model.parameters()).device.type == "cpu"
    assert run.optimizer.param_groups[0]["lr"] == run.cfg.optim.lr
    assert not (tmp_path / "run").exists()  # a build writes nothing


def test_the_task_check_refuses_out_of_range_values(prepared):
    with pytest.raises(UserError, match=r"data\.foreground_fraction"):
        TASK.check_config(config(prepared, "data.foreground_fraction=1.5"))


def test_a_build_refuses_zoom_pads_that_do_not_fit_the_slices(prepared, tmp_path):
    with pytest.raises(UserError, match=r"method\.views\.zoom_pads.*16×16"):
        build(config(prepared, "method.views.zoom_pads=[2,8]"), tmp_path)


def test_a_build_refuses_a_missing_prepared_folder(tmp_path):
    with pytest.raises(UserError):
        build(config(tmp_path / "absent"), tmp_path)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------- steps_in_epoch


@pytest.mark.parametrize(
    ("batch_size", "steps_per_epoch", "expected"),
    [
        (1, "", TRAIN_SLICES),  # one pass over the train slices
        (2, "", TRAIN_SLICES // 2),  # full batches only
        (8, "", 1),  # at least one step
        (1, "3", 3),  # train.steps_per_epoch overrides
    ],
)
def test_steps_in_epoch(prepared, tmp_path, batch_size, steps_per_epoch, expected):
    cfg = config(prepared, f"train.batch_size={batch_size}", f"train.steps_per_epoch={steps_per_epoch}")
    run = build(cfg, tmp_path)
    assert run.steps_in_epoch(0) == expected
    assert run.steps_in_epoch(7) == expected


# ----------------------------------------------------------------------------------------------- epochs


def test_warmup_epochs_train_without_views_and_meta_weights_then_switch_them_on(prepared, tmp_path, spy):
    run = build(config(prepared, "method.warmup_epochs=1", "train.batch_size=2"), tmp_path)
    run.begin_epoch(0)
    run.train_step()
    warmup_stats = run.running_stats()
    run.begin_epoch(1)
    run.train_step()
    weighted_stats = run.running_stats()

    assert [(c["batch"], c["meta"], c["views"], c["meta_weighting"]) for c in spy] == [
        (2, 1, False, False),  # warm-up: the augmented slices themselves
        (10, 5, True, True),  # then five views of each train and meta slice
    ]
    assert set(warmup_stats) == {"loss", "train_dice_reference", "meta_loss"}
    assert set(weighted_stats) == {"loss", "train_dice_reference", "meta_loss", "alpha_mean", "beta_mean"}


def test_l2rw_meta_weights_after_warmup_without_views(prepared, tmp_path, spy):
    run = build(config(prepared, "method.name=l2rw", "method.warmup_epochs=1"), tmp_path)
    run.begin_epoch(1)
    run.train_step()
    stats = run.running_stats()
    assert [(c["batch"], c["meta"], c["views"], c["meta_weighting"]) for c in spy] == [(1, 1, False, True)]
    assert "alpha_mean" in stats
    assert stats["beta_mean"] == 0.0


def test_running_stats_are_means_over_the_epochs_steps(prepared, tmp_path, spy):
    run = build(config(prepared), tmp_path)
    run.begin_epoch(0)
    for _ in range(3):
        run.train_step()
    stats = run.running_stats()
    assert set(stats) == set(spy[0]["stats"])
    for name, value in stats.items():
        assert isinstance(value, float)
        assert value == pytest.approx(sum(call["stats"][name] for call in spy) / 3, rel=1e-5), name

    run.begin_epoch(1)  # the statistics start afresh
    run.train_step()
    assert run.running_stats() == pytest.approx(spy[3]["stats"], rel=1e-6)


def test_end_epoch_returns_meta_dice_on_the_meta_cases_and_no_val_dice_without_a_val_split(
    prepared, tmp_path
):
    run = build(config(prepared), tmp_path)
    run.begin_epoch(0)
    run.train_step()
    metrics = run.end_epoch()
    assert set(metrics) == {"meta_dice"}
    assert metrics["meta_dice"] == validation_dice(run.model, run.meta_volumes)
    assert 0.0 <= metrics["meta_dice"] <= 1.0
    assert run.model.training  # validation restores train mode


# ----------------------------------------------------------------------------------------- checkpointing


def engine_state(run: SegmentationRun) -> dict:
    """What the engine saves of a run (beside the schedule), through torch.save as in last.pt."""
    state = {**run.state_dict(), "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


def load_engine_state(run: SegmentationRun, state: dict) -> None:
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.load_state_dict(state)


def test_state_dict_round_trip_continues_bit_for_bit(prepared, tmp_path):
    cfg = config(prepared)
    assert cfg.method.uses_ema  # the teacher is part of the state

    straight = build(cfg, tmp_path)
    straight.begin_epoch(0)
    for _ in range(4):
        straight.train_step()

    first = build(cfg, tmp_path)
    first.begin_epoch(0)
    for _ in range(2):
        first.train_step()
    state = engine_state(first)
    assert {"teacher", "generator", "train_stream", "meta_stream"} <= set(state)

    resumed = build(cfg, tmp_path)
    load_engine_state(resumed, state)
    resumed.begin_epoch(0)
    for _ in range(2):
        resumed.train_step()

    expected = straight.model.state_dict()  # parameters and BatchNorm statistics
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    expected_teacher = straight.step.teacher.state_dict()
    resumed_teacher = resumed.step.teacher.state_dict()
    assert resumed_teacher["num_updates"] == expected_teacher["num_updates"] == 8  # two updates a step
    for name, tensor in resumed_teacher["model"].items():
        assert torch.equal(tensor, expected_teacher["model"][name]), name


def test_final_state_holds_the_teacher_only_with_ema_and_always_the_data_record(prepared, tmp_path):
    record = data_record(load_manifest(prepared))
    without = build(config(prepared, "method.ema.enabled=false"), tmp_path)
    assert without.final_state() == {"teacher": None, "robust_loss": None, "data": record}
    assert without.state_dict()["teacher"] is None
    assert without.state_dict()["data"] == record

    with_ema = build(config(prepared, "method.ema.enabled=true"), tmp_path)
    final = with_ema.final_state()
    assert set(final) == {"teacher", "robust_loss", "data"}
    assert set(final["teacher"]) == {"model", "num_updates"}
    assert set(final["teacher"]["model"]) == set(with_ema.model.state_dict())


# ------------------------------------------------------------------------------------------- slice_stream


def slices_with_foreground(foreground: list[int], count: int = 8) -> SliceSet:
    labels = torch.zeros(count, 1, 4, 4, dtype=torch.uint8)
    for index in foreground:
        labels[index, 0, 1, 2] = 1
    images = torch.rand(count, 1, 4, 4)
    has_reference = torch.ones(count, dtype=torch.bool)
    return SliceSet(images, labels, labels.clone(), has_reference, 2, ("Case00",), (count,))


def test_slice_stream_without_foreground_fraction_is_a_uniform_stream():
    stream = slice_stream(
        slices_with_foreground([]), 3, foreground_fraction=0.0, groups=2, generator=torch.Generator()
    )
    assert isinstance(stream, IndexStream)
    assert stream.next().shape == (6,)  # batch size × processes


@pytest.mark.parametrize("groups", [1, 2])
def test_slice_stream_draws_the_foreground_share_of_every_batch(groups):
    foreground = [1, 5]
    slices = slices_with_foreground(foreground)
    stream = slice_stream(
        slices, 4, foreground_fraction=0.5, groups=groups, generator=torch.Generator().manual_seed(0)
    )
    assert isinstance(stream, MixedIndexStream)
    seen = set()
    for _ in range(20):
        batch = stream.next()
        assert batch.shape == (4 * groups,)
        for group in batch.view(groups, 4):
            assert set(group[:2].tolist()) <= set(foreground)  # half of each process's batch
            seen.update(group[2:].tolist())
    assert seen - set(foreground)  # the rest come from every slice


def test_slice_stream_with_a_share_above_zero_oversamples_a_batch_of_one():
    foreground = [1, 5]
    stream = slice_stream(
        slices_with_foreground(foreground),
        1,
        foreground_fraction=0.5,
        groups=1,
        generator=torch.Generator().manual_seed(0),
    )
    draws = torch.cat([stream.next() for _ in range(20)]).tolist()
    assert any(index in foreground for index in draws)
    assert isinstance(stream, MixedIndexStream)


def test_slice_stream_of_a_split_without_foreground_is_a_user_error():
    with pytest.raises(UserError, match=r"data\.foreground_fraction: no slice"):
        slice_stream(
            slices_with_foreground([]), 2, foreground_fraction=0.5, groups=1, generator=torch.Generator()
        )


def test_a_run_with_foreground_fraction_oversamples_the_train_slices_with_foreground(prepared, tmp_path):
    run = build(config(prepared, "data.foreground_fraction=0.5", "train.batch_size=2"), tmp_path)
    for _ in range(10):
        assert run.train_stream.next()[0].item() in TRAIN_FOREGROUND


# ------------------------------------------------------------------------------------ the val split


@pytest.fixture(scope="module")
def prepared_val(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_trainer_val") / "prepared"
    write_prepared(folder, val=VAL)
    return folder


def test_with_a_val_split_end_epoch_logs_val_dice_on_its_cases_beside_meta_dice(prepared_val, tmp_path):
    run = build(config(prepared_val), tmp_path)
    assert [volume.case_id for volume in run.val_volumes] == VAL
    assert [volume.case_id for volume in run.meta_volumes] == ["Case02"]
    run.begin_epoch(0)
    run.train_step()
    metrics = run.end_epoch()
    assert set(metrics) == {"meta_dice", "val_dice"}
    assert metrics["val_dice"] == validation_dice(run.model, run.val_volumes)
    assert metrics["meta_dice"] == validation_dice(run.model, run.meta_volumes)


def test_best_val_without_a_val_split_is_one_line_and_writes_nothing(prepared, tmp_path):
    with pytest.raises(UserError, match=r"manifest\.json: train\.select=best_val needs a 'val' split") as err:
        seg_trainer.train(config(prepared, "train.select=best_val"), tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_training_never_reads_the_test_cases(prepared_val, tmp_path, monkeypatch):
    read: list[str] = []
    original = seg_data.load_case

    def recording(prepared, case_id):
        read.append(case_id)
        return original(prepared, case_id)

    monkeypatch.setattr(seg_data, "load_case", recording)
    seg_trainer.train(config(prepared_val, "train.epochs=1", "train.steps_per_epoch=1"), tmp_path / "run")
    assert set(read) == {"Case00", "Case01", "Case02", *VAL}  # train, meta and val; never Case03 (test)


def _scripted_val_dice(monkeypatch, values: list[float]) -> None:
    """``validation_dice`` of the trainer: ``values`` in turn on the val cases, 0.1 on the meta cases."""
    remaining = iter(values)

    def scripted(model, volumes, amp_dtype=None):
        return next(remaining) if volumes[0].case_id in VAL else 0.1

    monkeypatch.setattr(seg_trainer, "validation_dice", scripted)


def test_best_val_puts_the_best_epochs_weights_in_final_pt(prepared_val, tmp_path, monkeypatch):
    sets = ("train.steps_per_epoch=1", "method.name=baseline")
    # The weights after epoch 1, from a run of one epoch (same seed, same schedule: the same weights).
    one = seg_trainer.train(config(prepared_val, *sets, "train.epochs=1"), tmp_path / "one")
    after_one = load_checkpoint(one / "checkpoints" / "final.pt")["model"]

    _scripted_val_dice(monkeypatch, [0.5, 0.3])  # epoch 1 is the best
    cfg = config(prepared_val, *sets, "train.epochs=2", "train.select=best_val")
    run_dir = seg_trainer.train(cfg, tmp_path / "two")
    final = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert final["selected_epoch"] == last["best"]["epoch"] == 1
    assert final["selected_val_dice"] == 0.5
    for name, tensor in after_one.items():
        assert torch.equal(final["model"][name], tensor), name
    assert any(not torch.equal(final["model"][name], t) for name, t in last["model"].items())  # not epoch 2
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [row["val_dice"] for row in rows] == ["0.5", "0.3"]
    assert [row["best_epoch"] for row in rows] == ["1", "1"]
    assert [row["best_val_dice"] for row in rows] == ["0.5", "0.5"]
    assert [row["meta_dice"] for row in rows] == ["0.1", "0.1"]


def test_a_resumed_best_val_run_keeps_the_best_so_far(prepared_val, tmp_path, monkeypatch):
    cfg = config(prepared_val, "train.select=best_val", "method.name=baseline")
    _scripted_val_dice(monkeypatch, [0.5, 0.3])
    first = build(cfg, tmp_path)
    first.begin_epoch(0)
    first.train_step()
    assert first.end_epoch()["best_epoch"] == 1
    after_one = {name: tensor.clone() for name, tensor in first.model.state_dict().items()}
    state = engine_state(first)

    resumed = build(cfg, tmp_path)
    load_engine_state(resumed, state)
    resumed.begin_epoch(1)
    resumed.train_step()
    metrics = resumed.end_epoch()
    assert (metrics["val_dice"], metrics["best_epoch"], metrics["best_val_dice"]) == (0.3, 1, 0.5)
    final = resumed.final_state()
    assert final["selected_epoch"] == 1
    for name, tensor in after_one.items():
        assert torch.equal(final["model"][name], tensor), name


def test_select_final_keeps_the_last_epochs_weights(prepared_val, tmp_path):
    run_dir = seg_trainer.train(
        config(prepared_val, "train.epochs=1", "train.steps_per_epoch=1"), tmp_path / "r"
    )
    final = load_checkpoint(run_dir / "checkpoints" / "final.pt")
    last = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert "selected_epoch" not in final
    assert last["best"] is None
    for name, tensor in last["model"].items():
        assert torch.equal(final["model"][name], tensor), name


def test_tensorboard_overlays_every_few_epochs_leave_the_training_unchanged(prepared, tmp_path):
    sets = ["train.epochs=2", "train.steps_per_epoch=1"]
    with_figures = seg_trainer.train(config(prepared, *sets, "train.figures_every=1"), tmp_path / "with")
    without = seg_trainer.train(config(prepared, *sets, "train.figures_every=0"), tmp_path / "without")
    events = EventAccumulator(str(with_figures / "tensorboard"))
    events.Reload()
    assert [image.step for image in events.Images("figures/overlay")] == [1, 2]
    assert [image.step for image in events.Images("figures/weights")] == [1, 2]  # mlbseg: α/β maps too
    quiet = EventAccumulator(str(without / "tensorboard"))
    quiet.Reload()
    assert quiet.Tags()["images"] == []
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (with_figures, without))
    for name, tensor in a["model"].items():  # parameters and BatchNorm statistics alike
        assert torch.equal(tensor, b["model"][name]), name
    assert torch.equal(a["generator"], b["generator"])  # the run's own randomness untouched
    for name, tensor in a["teacher"]["model"].items():
        assert torch.equal(tensor, b["teacher"]["model"][name]), name
