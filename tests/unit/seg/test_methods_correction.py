"""ADELE's adaptive early-learning correction: the turning point, the correction rule, the step, the run.

The rules (mlbseg.seg.selection) are checked on hand-made curves and tensors; the step on a tiny conv net
without BatchNorm (as in test_methods_selection.py); the run on the tiny prepared dataset, where a
hand-made IoU history makes the turning point fall in the epoch the test trains.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch._inductor.config  # imported while collecting, as in test_trainer.py
from torch import nn

from mlbseg.errors import UserError
from mlbseg.seg.config import DataConfig, MethodConfig, SegConfig, check_config
from mlbseg.seg.inference import predict_probabilities
from mlbseg.seg.selection import (
    class_overlaps,
    early_learning_correction,
    early_learning_curve,
    early_learning_turning_epoch,
    fit_early_learning_curve,
)
from mlbseg.seg.step import Batch, SegmentationStep
from mlbseg.seg.trainer import SegmentationRun

from ._prepared import write_prepared
from ._runs import build, config, through_torch_save

pytestmark = pytest.mark.usefixtures("restore_determinism", "one_thread")

EPOCHS = np.arange(1, 21, dtype=np.float64)


# ------------------------------------------------------------------------------------------ the rules


def test_the_fit_recovers_the_parameters_of_an_exact_curve():
    curve = early_learning_curve(EPOCHS[:12], 0.7, 0.3, 1.4)
    assert fit_early_learning_curve(curve) == pytest.approx((0.7, 0.3, 1.4), rel=1e-4)
    assert fit_early_learning_curve(curve[:2]) is None  # three parameters need three epochs
    assert fit_early_learning_curve(np.zeros(8)) is None  # a class never predicted has learnt nothing


def test_the_turning_point_is_the_first_epoch_whose_fitted_slope_fell_by_r():
    # f(t) = 0.8 (1 - e^{-t/2}): f'(t) / f'(1) = e^{-(t - 1)/2}, below 0.1 from t = 1 + 2 ln 10 = 5.6 on
    curve = early_learning_curve(EPOCHS, 0.8, 0.5, 1.0)
    turning = [early_learning_turning_epoch(curve[:epochs], 0.9) for epochs in range(1, 13)]
    assert turning == [None] * 5 + [6] * 7  # detected once epoch 6 has been seen, and it stays epoch 6
    assert early_learning_turning_epoch(curve, 0.5) == 3  # e^{-(t - 1)/2} < 0.5 from t = 2.39 on
    # noise on the IoU moves the fit, not the epoch much
    noisy = curve + np.random.default_rng(0).normal(0.0, 0.01, curve.shape)
    assert early_learning_turning_epoch(noisy, 0.9) in (5, 6, 7)


def test_a_curve_still_rising_steeply_has_not_turned():
    linear = 0.03 * EPOCHS  # no saturation in sight
    assert early_learning_turning_epoch(linear, 0.9) is None
    # a late start: the slope grows (relative change above r, but upwards), no turning point yet
    late = early_learning_curve(EPOCHS[:5], 0.9, 0.02, 2.0)
    assert early_learning_turning_epoch(late, 0.9) is None
    assert early_learning_turning_epoch(early_learning_curve(EPOCHS, 0.9, 0.02, 2.0), 0.9) is not None


def test_class_overlaps_count_each_foreground_class_intersection_and_union():
    prediction = torch.tensor([[[[0, 1, 1, 2], [2, 2, 0, 1]]]])
    labels = torch.tensor([[[[0, 1, 0, 2], [2, 1, 1, 0]]]]).float()
    counts = class_overlaps(prediction, labels, 3)
    assert counts.dtype == torch.int64
    # class 1: predicted {1, 2, 7}, labelled {1, 5, 6}: 1 in both, 5 in either
    # class 2: predicted {3, 4, 5}, labelled {3, 4}: 2 in both, 3 in either
    assert counts.tolist() == [[1, 2], [5, 3]]


def test_the_correction_moves_confident_pixels_into_and_out_of_the_corrected_classes():
    # K = 3, class 1 past its turning point, class 2 not; six pixels in one row
    labels = torch.tensor([[[0, 1, 0, 1, 0, 2]]])
    probs = torch.tensor(
        [
            [0.05, 0.85, 0.05, 0.05, 0.25, 0.05],  # background
            [0.90, 0.10, 0.05, 0.05, 0.75, 0.90],  # class 1
            [0.05, 0.05, 0.90, 0.90, 0.00, 0.05],  # class 2
        ]
    )[None, :, None]  # [1, 3, 1, 6]
    corrected = torch.tensor([False, True, False])
    new = early_learning_correction(labels, probs, corrected, 0.8)
    # 0 -> 1 (sure of class 1), 1 -> 0 (sure of the background), 0 stays (sure of class 2, neither is
    # corrected), 1 -> 2 (class 1 gives it up), 0 stays (0.75 is not above 0.8), 2 -> 1 (sure of class 1)
    assert new.tolist() == [[[1, 0, 0, 2, 0, 1]]]
    assert early_learning_correction(labels, probs, torch.zeros(3, dtype=torch.bool), 0.8).equal(labels)
    # binary: the foreground grows where p > 0.8 and shrinks where p < 0.2
    foreground = torch.tensor([0.9, 0.1, 0.3, 0.75])
    binary = torch.stack([1 - foreground, foreground])[None, :, None]  # [1, 2, 1, 4]
    flipped = early_learning_correction(
        torch.tensor([[[0, 1, 1, 0]]]), binary, torch.tensor([False, True]), 0.8
    )
    assert flipped.tolist() == [[[1, 0, 1, 0]]]


def test_the_adele_parameters_are_checked():
    for key, value in (("adele_slope_drop", 0.0), ("adele_slope_drop", 1.0), ("adele_confidence", 0.4)):
        with pytest.raises(UserError, match=rf"method\.{key}"):
            check_config(SegConfig(method=MethodConfig(name="adele", **{key: value})))
    check_config(SegConfig(method=MethodConfig(name="adele", adele_confidence=0.5)))


# ------------------------------------------------------------------------------------------ the step


def _net(classes: int) -> nn.Module:
    torch.manual_seed(0)
    channels = 1 if classes == 2 else classes
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, channels, 3, padding=1))


def _step(name: str, classes: int) -> SegmentationStep:
    model = _net(classes)
    return SegmentationStep(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        method=MethodConfig(name=name),
        data=DataConfig(flip_prob=0.0, rotation_degrees=0.0),
        grad_clip_norm=None,
        generator=torch.Generator().manual_seed(0),
        num_labels=classes,
    )


def _hand_batch(classes: int) -> Batch:
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(2, 1, 8, 8)
    labels[:, :, 2:6, 2:6] = 1
    if classes > 2:
        labels[:, :, 3:5, 3:5] = classes - 1
    return Batch(images, labels, labels.clone(), None)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_adele_step_is_the_mean_cost_step_and_counts_the_training_iou(classes):
    adele, baseline = _step("adele", classes), _step("baseline", classes)
    adele.begin_epoch(0)
    assert adele.class_overlap().tolist() == [[0] * (classes - 1)] * 2
    expected = torch.zeros(2, classes - 1, dtype=torch.int64)
    for _ in range(2):
        batch = _hand_batch(classes)
        with torch.no_grad():
            logits = adele.model(batch.images)
        prediction = (logits > 0).float() if classes == 2 else logits.argmax(dim=1, keepdim=True)
        expected += class_overlaps(prediction, batch.labels, classes)
        stats = adele(batch, _hand_batch(classes), meta_weighting=True)
        baseline(_hand_batch(classes), _hand_batch(classes), meta_weighting=True)
    assert adele.class_overlap().equal(expected)
    assert int(expected[1].min()) > 0
    for mine, theirs in zip(adele.model.parameters(), baseline.model.parameters(), strict=True):
        assert torch.equal(mine, theirs)  # the loss is the mean cost of the labels it is given
    assert "meta_loss" not in stats
    adele.begin_epoch(1)
    assert int(adele.class_overlap().sum()) == 0


# ------------------------------------------------------------------------------------------ in a run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_methods_correction") / "prepared"
    write_prepared(folder)
    return folder


ADELE = ("method.name=adele", "method.adele_confidence=0.5")  # 0.5: every confident pixel can move


def _build(prepared: Path, tmp_path: Path) -> SegmentationRun:
    run = build(config(prepared, *ADELE), tmp_path)
    # a hand-made history of two saturated epochs: the fit turns in the epoch the test trains
    run.correction.curves = [[0.6, 0.6]]
    return run


def _epoch(run: SegmentationRun, epoch: int) -> dict[str, float]:
    run.begin_epoch(epoch)
    for _ in range(2):
        run.train_step()
    return run.end_epoch()


def test_an_adele_run_corrects_its_train_labels_after_the_turning_point_and_resumes_bit_for_bit(
    prepared, tmp_path
):
    straight = _build(prepared, tmp_path)
    assert straight.correction is not None
    given = straight.train_set.labels.clone()
    assert through_torch_save(straight.state_dict())["correction"]["labels"] is None  # nothing turned

    metrics = _epoch(straight, 2)
    assert straight.correction.turning_epochs == [3]
    assert len(straight.correction.curves[0]) == 3
    assert metrics["corrected_classes"] == 1.0
    # the stored labels are the rule applied to the model's eval-mode probabilities
    probs = predict_probabilities(straight.model, straight.train_set.images)
    probs = torch.cat([1 - probs, probs], dim=1)
    expected = early_learning_correction(given[:, 0].long(), probs, torch.tensor([False, True]), 0.5)
    assert straight.train_set.labels[:, 0].long().equal(expected)
    changed = float((straight.train_set.labels != given).float().mean())
    assert changed > 0
    assert metrics["corrected_share"] == pytest.approx(changed)
    assert 0.0 <= metrics["train_iou"] <= 1.0
    _epoch(straight, 3)  # trains on the corrected labels, corrects again

    first = _build(prepared, tmp_path)
    _epoch(first, 2)
    state = {
        **first.state_dict(),
        "model": first.model.state_dict(),
        "optimizer": first.optimizer.state_dict(),
    }
    state = through_torch_save(state)
    assert state["correction"]["turning_epochs"] == [3]
    assert state["correction"]["labels"].dtype == torch.uint8

    resumed = _build(prepared, tmp_path)
    resumed.model.load_state_dict(state["model"])
    resumed.optimizer.load_state_dict(state["optimizer"])
    resumed.load_state_dict(state)
    assert resumed.train_set.labels.equal(first.train_set.labels)
    _epoch(resumed, 3)
    for name, tensor in resumed.model.state_dict().items():
        assert torch.equal(tensor, straight.model.state_dict()[name]), name
    assert resumed.train_set.labels.equal(straight.train_set.labels)
    assert resumed.correction.curves == straight.correction.curves
    assert resumed.correction.turning_epochs == straight.correction.turning_epochs
