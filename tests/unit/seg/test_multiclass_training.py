"""Training on K = 3 labels and two image channels, a given annotation and a train case without reference.

Runs are built as in test_trainer.py (shipped ``smoke`` config, the small model of ``_prepared.MODEL``, CPU)
on ``_prepared.ZONES``: train Case00 (reference and noisy levels), Case01 (reference, noisy levels and a
``rater2`` annotation), Case04 (only ``rater2``, no reference); meta Case02.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._inductor.config  # imported while collecting, as in test_trainer.py
import torch.nn.functional as F
from torch import nn

from mlbseg.engine.checkpoint import load_checkpoint
from mlbseg.errors import UserError
from mlbseg.prep.manifest import load_case, load_manifest
from mlbseg.seg import trainer as seg_trainer
from mlbseg.seg.config import DataConfig, MethodConfig, SegConfig, ViewsConfig
from mlbseg.seg.data import data_record
from mlbseg.seg.step import SegmentationStep
from mlbseg.seg.trainer import TASK

from . import _runs as runs
from ._prepared import SIZE, ZONES, ZONES_SPLITS, num_slices, write_prepared
from ._runs import build, through_torch_save

pytestmark = pytest.mark.usefixtures("restore_determinism", "one_thread")

K, CHANNELS = ZONES["num_labels"], ZONES["channels"]


@pytest.fixture(scope="module")
def zones(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_multiclass") / "zones"
    write_prepared(folder, ZONES_SPLITS, **ZONES)
    return folder


def config(prepared: Path, *overrides: str) -> SegConfig:
    """The smoke config (MLB-Seg with consistency and EMA) on ``prepared``, noise L2, small model, CPU."""
    return runs.config(prepared, "data.noise=L2", *overrides)


# ------------------------------------------------------------------------------------- every method


@pytest.mark.parametrize("method", ["baseline", "baseline_plus_meta", "l2rw", "mlbseg"])
def test_every_method_trains_a_step_on_three_labels_and_two_channels(zones, tmp_path, method):
    cfg = config(zones, f"method.name={method}")
    assert cfg.method.uses_ema == cfg.method.uses_consistency == (method == "mlbseg")  # both MLB-Seg terms
    run = build(cfg, tmp_path)
    assert run.train_set.images.shape[1] == CHANNELS
    run.model.eval()
    with torch.no_grad():
        assert run.model(torch.rand(1, CHANNELS, SIZE, SIZE)).shape == (1, K, SIZE, SIZE)
    run.model.train()

    run.begin_epoch(0)
    run.train_step()
    stats = run.running_stats()
    assert all(math.isfinite(value) for value in stats.values()), stats
    assert ("alpha_mean" in stats) == (method in ("l2rw", "mlbseg"))
    assert ("meta_loss" in stats) == (method != "baseline")
    assert 0.0 <= stats["train_dice_reference"] <= 1.0
    if method not in ("l2rw", "mlbseg"):
        return

    step, views = run.step, method == "mlbseg"
    batch = step.expand(*run.train_set.batch(torch.tensor([1, 3])), views=views)
    meta = step.expand(*run.meta_set.batch(torch.tensor([2])), views=views)
    alpha, beta, pseudo = step.meta_weights(
        batch, meta, step.probabilities(batch.images), step.extra_loss(batch)
    )
    rows = 10 if views else 2
    assert alpha.shape == (rows, SIZE, SIZE)  # per pixel, no class dimension
    assert alpha.min() >= 0
    if method == "l2rw":
        assert beta is None
        assert pseudo is None
        return
    assert beta.shape == (rows, SIZE, SIZE)
    assert beta.min() >= 0
    assert float(alpha.sum() + beta.sum()) == pytest.approx(1.0, rel=1e-5)  # org normalisation
    assert pseudo.shape == (rows, 1, SIZE, SIZE)
    assert set(pseudo.unique().tolist()) <= {0.0, 1.0, 2.0}


def _tiny_step(name: str) -> SegmentationStep:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(CHANNELS, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, K, 3, padding=1))
    method = MethodConfig(name=name, views=ViewsConfig(zoom_pads=(2, 4)))
    return SegmentationStep(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        method=method,
        data=DataConfig(flip_prob=0.0, rotation_degrees=0.0),
        grad_clip_norm=None,
        generator=torch.Generator().manual_seed(0),
        num_labels=K,
    )


def _hand_batch() -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.rand(2, CHANNELS, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(2, 1, 8, 8)
    labels[:, :, 2:6, 2:6] = 1
    labels[:, :, 3:5, 3:5] = 2
    return images, labels


def test_the_baseline_step_is_the_mean_softmax_cross_entropy_of_the_noisy_labels():
    step = _tiny_step("baseline")
    images, labels = _hand_batch()
    batch = step.expand(images, labels, labels)
    with torch.no_grad():
        expected = F.cross_entropy(step.model(batch.images), labels[:, 0].long())
    stats = step(batch, batch, meta_weighting=False)
    torch.testing.assert_close(stats["loss"], expected)


def test_train_dice_reference_is_the_mean_over_foreground_classes_of_the_slices_with_a_reference():
    step = _tiny_step("baseline")
    _, reference = _hand_batch()
    predicted = reference.clone()
    predicted[0, 0, 2, 2:6] = 2  # slice 0: four class-1 pixels predicted as class 2
    predicted[1] = 0  # slice 1 (no reference): all background
    probs = F.one_hot(predicted[:, 0].long(), K).movedim(-1, 1).float()
    has_reference = torch.tensor([True, False])
    batch = step.expand(torch.rand(2, CHANNELS, 8, 8), reference, reference, has_reference=has_reference)
    # slice 0 alone: class 1 has 12 reference and 8 predicted pixels, all 8 right; class 2 4 and 8, 4 right
    expected = (2 * 8 / (12 + 8) + 2 * 4 / (4 + 8)) / 2
    assert float(step.reference_dice(probs, batch)) == pytest.approx(expected)
    none = torch.tensor([False, False])
    unmonitored = step.expand(torch.rand(2, CHANNELS, 8, 8), reference, reference, has_reference=none)
    assert math.isnan(float(step.reference_dice(probs, unmonitored)))


# --------------------------------------------------------------------------- labels and what is left out


def test_an_annotation_trains_on_its_cases_and_the_left_out_and_unmonitored_cases_are_said_once(
    zones, tmp_path, capsys
):
    run = build(config(zones, "data.noise=rater2"), tmp_path)
    assert run.train_set.cases == ("Case01", "Case04")
    annotation = np.concatenate([load_case(zones, case)["noisy_rater2"] for case in run.train_set.cases])
    np.testing.assert_array_equal(run.train_set.labels[:, 0].numpy(), annotation)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        "data.noise=rater2: left out 1 of 3 train cases without 'noisy_rater2' labels (Case00)",
        "train_dice_reference: 1 train case(s) without a reference are not monitored (Case04)",
    ]

    build(config(zones, "data.noise=L2"), tmp_path)
    assert capsys.readouterr().err.splitlines() == [
        "data.noise=L2: left out 1 of 3 train cases without 'noisy_L2' labels (Case04)"
    ]


def test_train_dice_reference_averages_only_the_steps_with_a_reference(zones, tmp_path, monkeypatch):
    run = build(config(zones, "data.noise=rater2", "train.batch_size=1"), tmp_path)
    without, with_reference = num_slices(1), 1  # Case04's first slice; Case01 z=1
    draws = iter([torch.tensor([without]), torch.tensor([with_reference])])
    monkeypatch.setattr(run.train_stream, "next", lambda: next(draws))
    seen: list[float] = []
    original = SegmentationStep.__call__

    def recording(self, batch, meta, meta_weighting):
        stats = original(self, batch, meta, meta_weighting)
        seen.append(float(stats["train_dice_reference"]))
        return stats

    monkeypatch.setattr(SegmentationStep, "__call__", recording)
    run.begin_epoch(0)
    run.train_step()
    run.train_step()
    assert math.isnan(seen[0])
    assert math.isfinite(seen[1])
    stats = run.running_stats()
    assert stats["train_dice_reference"] == pytest.approx(seen[1])
    assert math.isfinite(stats["loss"])


def test_an_unknown_annotation_is_one_line_listing_the_available_labels(zones, tmp_path):
    with pytest.raises(UserError) as caught:
        build(config(zones, "data.noise=rater3"), tmp_path)
    assert str(caught.value).endswith(
        "manifest.json: 'data.noise' must be one of L1, L2, L3, clean, rater2 (the labels of this dataset); "
        "got 'rater3'"
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("noise", ["a/b", "", "rater 2"])
def test_the_config_check_refuses_a_noise_name_that_cannot_be_an_annotation(zones, noise):
    with pytest.raises(UserError, match=r"'data\.noise' must be one of L1, L2, L3, clean or the name"):
        TASK.check_config(config(zones, f"data.noise='{noise}'"))


# ----------------------------------------------------------------------------------------- checkpoints


def test_a_three_label_run_resumes_bit_for_bit_also_from_a_checkpoint_without_data(zones, tmp_path):
    cfg = config(zones, "data.noise=rater2")
    straight = build(cfg, tmp_path)
    straight.begin_epoch(0)
    for _ in range(3):
        straight.train_step()

    first = build(cfg, tmp_path)
    first.begin_epoch(0)
    first.train_step()
    state = {
        **first.state_dict(),
        "model": first.model.state_dict(),
        "optimizer": first.optimizer.state_dict(),
    }
    state = through_torch_save(state)
    assert state["data"] == data_record(load_manifest(zones))
    del state["data"]  # as written before checkpoints held it

    resumed = build(cfg, tmp_path)
    resumed.model.load_state_dict(state["model"])
    resumed.optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state)
    resumed.begin_epoch(0)
    for _ in range(2):
        resumed.train_step()
    expected = straight.model.state_dict()
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    expected_teacher = straight.step.teacher.state_dict()["model"]
    for name, tensor in resumed.step.teacher.state_dict()["model"].items():
        assert torch.equal(tensor, expected_teacher[name]), name


def test_last_and_final_checkpoints_hold_the_data_record(zones, tmp_path):
    cfg = config(zones, "train.epochs=1", "train.steps_per_epoch=1")
    run_dir = seg_trainer.train(cfg, tmp_path / "run")
    record = data_record(load_manifest(zones))
    assert record["channels"] == [0, 1]
    assert len(record["labels"]) == K
    for name in ("last.pt", "final.pt"):
        assert load_checkpoint(run_dir / "checkpoints" / name)["data"] == record, name


def test_the_default_run_folder_is_named_after_the_annotation(zones):
    assert seg_trainer.default_run_dir(config(zones, "data.noise=rater2")) == Path("runs/smoke-rater2-seed0")
