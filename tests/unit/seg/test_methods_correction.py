"""ADELE's adaptive early-learning correction: the turning point, the correction rule, the step, the run.

The rules (mlbseg.seg.selection) and the multi-scale consistency (mlbseg.seg.multiscale) are checked on
hand-made curves and tensors; the step on a tiny conv net without BatchNorm (as in
test_methods_selection.py); the correction pass on a network whose output depends only on its input's
size; the run on the tiny prepared dataset, where a hand-made IoU history makes the turning point fall in
the epoch the test trains.
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

from mlbseg.config import load_config
from mlbseg.engine.distributed import SINGLE
from mlbseg.errors import UserError
from mlbseg.seg.config import DataConfig, MethodConfig, SegConfig, check_config
from mlbseg.seg.correction import EarlyLearningCorrection
from mlbseg.seg.data import SliceSet
from mlbseg.seg.multiscale import forward_at_scale, multiscale_consistency, rescaled_size
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
BILINEAR = {"mode": "bilinear", "align_corners": True}


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
    bad = (
        ("adele_slope_drop", 0.0),
        ("adele_slope_drop", 1.0),
        ("adele_confidence", 0.4),
        ("adele_scales", (0.7, 1.0)),  # scale 1 is always there
        ("adele_scales", (0.0, 1.5)),
        ("adele_scales", ()),
        ("adele_consistency_weight", -0.1),
        ("adele_consistency_confidence", 1.0),
        ("adele_consistency_confidence", -0.1),
    )
    for key, value in bad:
        with pytest.raises(UserError, match=rf"^method\.{key}: ") as error:
            check_config(SegConfig(method=MethodConfig(name="adele", **{key: value})))
        assert "\n" not in str(error.value)
    check_config(SegConfig(method=MethodConfig(name="adele", adele_confidence=0.5)))
    check_config(SegConfig(method=MethodConfig(name="adele", adele_consistency_weight=0.0)))
    check_config(SegConfig(method=MethodConfig(name="adele", adele_consistency_confidence=0.0)))


def test_the_multiscale_keys_load_from_a_config_and_the_weight_0_turns_the_term_off():
    sets = ["method.name=adele", "method.adele_scales=[0.5, 2]", "method.adele_consistency_confidence=0.9"]
    method = load_config(SegConfig, None, sets).method
    assert (method.adele_scales, method.adele_consistency_confidence) == ((0.5, 2.0), 0.9)
    assert method.adele_consistency_weight == 1.0
    assert method.uses_multiscale_consistency
    off = load_config(SegConfig, None, [*sets, "method.adele_consistency_weight=0"]).method
    assert not off.uses_multiscale_consistency
    assert not MethodConfig(name="clslsr").uses_multiscale_consistency  # adele's term only


# ------------------------------------------------------------------------------- the multi-scale rules


def _log_probs(foreground: list[float]) -> torch.Tensor:
    """[1, 2, 1, P] binary class log-probabilities (background, foreground) of P pixels in a row."""
    probs = torch.tensor(foreground, dtype=torch.float64)
    return torch.stack([1 - probs, probs])[None, :, None].log()


def _kl(p: list[float], m: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, m, strict=True))


def test_the_multiscale_consistency_is_the_scales_kl_to_their_mixture_at_its_confident_pixels():
    # pixel 0: foreground 0.9, 0.7, 0.8 -> mixture (0.2, 0.8), confident at ρ = 0.75
    # pixel 1: foreground 0.5, 0.4, 0.6 -> mixture (0.5, 0.5), below ρ: counts 0 in the mean over 2 pixels
    scales = [_log_probs([0.9, 0.5]), _log_probs([0.7, 0.4]), _log_probs([0.8, 0.6])]
    confident = (_kl([0.1, 0.9], [0.2, 0.8]) + _kl([0.3, 0.7], [0.2, 0.8])) / 2  # the third is m itself
    assert float(multiscale_consistency(scales, 0.75)) == pytest.approx(confident, rel=1e-12)
    # what the scales predict at the unconfident pixel does not count while its mixture stays below ρ
    moved = [_log_probs([0.9, 0.3]), _log_probs([0.7, 0.45]), _log_probs([0.8, 0.65])]
    assert float(multiscale_consistency(moved, 0.75)) == pytest.approx(confident, rel=1e-12)
    # ρ = 0: every pixel counts
    unconfident = _kl([0.5, 0.5], [0.5, 0.5]) + _kl([0.6, 0.4], [0.5, 0.5]) + _kl([0.4, 0.6], [0.5, 0.5])
    everywhere = float(multiscale_consistency(scales, 0.0))
    assert everywhere == pytest.approx(confident + unconfident / 2, rel=1e-12)
    # the same prediction at every scale: 0; any disagreement: positive
    same = [_log_probs([0.9, 0.3])] * 3
    assert float(multiscale_consistency(same, 0.0)) == pytest.approx(0.0, abs=1e-15)
    assert everywhere > 0


def test_the_mixture_is_clamped_and_keeps_its_gradient():
    # foreground 1 at every scale: the mixture's 1 is clamped to 0.999 (and its 0 to 0.001), so KL ≠ 0
    certain = [torch.tensor([[[[-1e4]], [[0.0]]]], dtype=torch.float64)] * 3  # log-probabilities (0, 1)
    assert float(multiscale_consistency(certain, 0.8)) == pytest.approx(-3 * math.log(0.999), rel=1e-9)
    # the gradient reaches every scale, also through the mixture
    logits = [torch.tensor([[[[z]]]], requires_grad=True) for z in (2.0, 1.0, 3.0)]
    log_probs = [torch.cat([F.logsigmoid(-z), F.logsigmoid(z)], dim=1) for z in logits]
    multiscale_consistency(log_probs, 0.0).backward()
    assert all(float(z.grad.abs()) > 0 for z in logits)


def test_rescaled_sizes_are_the_nearest_multiple_of_the_divisor_and_at_least_one():
    assert rescaled_size(144, 0.7, 16) == 96  # 100.8 -> 6.3 multiples -> 6
    assert rescaled_size(144, 1.5, 16) == 224  # 216 = 13.5 multiples: halves up
    assert rescaled_size(144, 1.4, 16) == 208  # 201.6 -> 12.6 multiples -> 13
    assert rescaled_size(16, 0.3, 8) == 8  # 4.8 -> 0.6 multiples: at least one
    assert rescaled_size(16, 0.2, 8) == 8  # 3.2 -> 0.4 multiples: at least one, not 0
    assert rescaled_size(100, 0.7, 1) == 70


def test_a_forward_at_scale_sees_the_rescaled_images_and_returns_logits_on_their_grid():
    seen = []

    def forward(images: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(images.shape))
        return images[:, :1] * 2.0

    images = torch.rand(3, 2, 16, 24, generator=torch.Generator().manual_seed(0))
    logits = forward_at_scale(forward, images, 1.5, 8)
    assert seen == [(3, 2, 24, 40)]  # 24, and 36 -> 40 (4.5 multiples of 8: halves up)
    assert logits.shape == (3, 1, 16, 24)
    assert logits.dtype == torch.float32
    small = F.interpolate(images, size=(24, 40), **BILINEAR)
    assert logits.equal(F.interpolate(small[:, :1] * 2.0, size=(16, 24), **BILINEAR))
    # a constant image comes back constant: both resizes are bilinear with aligned corners
    assert forward_at_scale(forward, torch.full((1, 1, 16, 16), 0.25), 0.7, 4).allclose(torch.tensor(0.5))


# ------------------------------------------------------------------------------------------ the step


def _net(classes: int) -> nn.Module:
    torch.manual_seed(0)
    channels = 1 if classes == 2 else classes
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, channels, 3, padding=1))


def _step(name: str, classes: int, *, size_divisor: int = 1, **method: float) -> SegmentationStep:
    model = _net(classes)
    return SegmentationStep(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        method=MethodConfig(name=name, **method),
        data=DataConfig(flip_prob=0.0, rotation_degrees=0.0),
        grad_clip_norm=None,
        generator=torch.Generator().manual_seed(0),
        num_labels=classes,
        size_divisor=size_divisor,
    )


def _count_forwards(model: nn.Module) -> list[int]:
    """A one-entry list that counts the calls of ``model``."""
    calls = [0]
    model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _hand_batch(classes: int) -> Batch:
    images = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(2, 1, 8, 8)
    labels[:, :, 2:6, 2:6] = 1
    if classes > 2:
        labels[:, :, 3:5, 3:5] = classes - 1
    return Batch(images, labels, labels.clone(), None)


@pytest.mark.parametrize("weight", [0.0, 1.0])
@pytest.mark.parametrize("classes", [2, 3])
def test_the_adele_step_counts_the_training_iou_of_its_scale_1_prediction(classes, weight):
    adele = _step("adele", classes, adele_consistency_weight=weight, adele_consistency_confidence=0.0)
    baseline = _step("baseline", classes)
    forwards = _count_forwards(adele.model)
    adele.begin_epoch(0)
    assert adele.class_overlap().tolist() == [[0] * (classes - 1)] * 2
    expected = torch.zeros(2, classes - 1, dtype=torch.int64)
    for _ in range(2):
        batch = _hand_batch(classes)
        with torch.no_grad():
            logits = adele.model(batch.images)
        prediction = (logits > 0).float() if classes == 2 else logits.argmax(dim=1, keepdim=True)
        expected += class_overlaps(prediction, batch.labels, classes)
        calls = forwards[0]
        stats = adele(batch, _hand_batch(classes), meta_weighting=True)
        assert forwards[0] - calls == (3 if weight else 1)  # λ = 0: no extra forward at all
        baseline(_hand_batch(classes), _hand_batch(classes), meta_weighting=True)
    assert adele.class_overlap().equal(expected)
    assert int(expected[1].min()) > 0
    same = [
        torch.equal(mine, theirs)
        for mine, theirs in zip(adele.model.parameters(), baseline.model.parameters(), strict=True)
    ]
    # λ = 0: exactly the mean cost step of the labels it is given; λ > 0: the scales and their consistency
    assert all(same) if weight == 0 else not any(same)
    assert "meta_loss" not in stats
    adele.begin_epoch(1)
    assert int(adele.class_overlap().sum()) == 0


def _class_log_probabilities(logits: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return torch.cat([F.logsigmoid(-logits), F.logsigmoid(logits)], dim=1)
    return logits.log_softmax(dim=1)


def _cost(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, labels)
    return F.cross_entropy(logits, labels[:, 0].long())


@pytest.mark.parametrize("classes", [2, 3])
def test_the_multiscale_loss_is_the_mean_over_the_scales_of_the_cost_plus_the_weighted_consistency(classes):
    step = _step(
        "adele", classes, size_divisor=4, adele_consistency_weight=2.0, adele_consistency_confidence=0.0
    )
    batch = _hand_batch(classes)  # 8×8 slices: ×0.7 is 5.6 -> 4, ×1.5 is 12 (multiples of 4)
    with torch.no_grad():
        scaled = [step.model(batch.images)]
        for size in (4, 12):
            logits = step.model(F.interpolate(batch.images, size=(size, size), **BILINEAR))
            scaled.append(F.interpolate(logits, size=(8, 8), **BILINEAR))
    costs = sum(_cost(logits, batch.labels) for logits in scaled)
    log_probs = [_class_log_probabilities(logits) for logits in scaled]
    log_mixture = torch.stack([each.exp() for each in log_probs]).mean(dim=0).clamp(1e-3, 1 - 1e-3).log()
    consistency = sum((each.exp() * (each - log_mixture)).sum(dim=1) for each in log_probs).mean()
    assert float(consistency) > 0
    stats = step(batch, _hand_batch(classes), meta_weighting=False)  # on from the first (warm-up) step
    assert float(stats["loss"]) == pytest.approx(float((costs + 2.0 * consistency) / 3), rel=1e-6)
    # only pixels whose mixture reaches ρ count: ρ above every mixture's confidence leaves the costs
    strict = _step("adele", classes, size_divisor=4, adele_consistency_confidence=0.999)
    stats = strict(_hand_batch(classes), _hand_batch(classes), meta_weighting=False)
    assert float(stats["loss"]) == pytest.approx(float(costs / 3), rel=1e-6)


# ------------------------------------------------------------------------- the correction pass


class SizeDependentNet(nn.Module):
    """One foreground logit per pixel that depends only on the input's height: p = 0.7 at 8, 0.95 else.

    In train mode it predicts the background everywhere, so only an eval-mode pass can correct with it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height = images.shape[-2]
        self.seen.append(height)
        foreground = 0.0 if self.training else 0.7 if height == 8 else 0.95
        return torch.full_like(images[:, :1], foreground).logit()


def _corrected_labels(scales: tuple[float, ...]) -> tuple[torch.Tensor, list[int]]:
    """The labels of two all-background 8×8 slices after one correction, the foreground class turned."""
    labels = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    train_set = SliceSet(
        torch.rand(2, 1, 8, 8), labels, labels.clone(), torch.ones(2, dtype=torch.bool), 2, ("A",), (2,)
    )
    correction = EarlyLearningCorrection(
        train_set, slope_drop=0.9, confidence=0.8, scales=scales, size_divisor=4
    )
    correction.turning_epochs = [1]
    network = SizeDependentNet()
    correction.end_epoch(1, torch.zeros(2, 1, dtype=torch.int64), network, dist=SINGLE, amp_dtype=None)
    assert network.training  # its mode is restored
    return train_set.labels, network.seen


def test_the_correction_pass_follows_the_mean_of_the_three_scales_when_the_term_is_on():
    # scale 1 alone: 0.7 is not above τ = 0.8, nothing moves
    labels, seen = _corrected_labels(())
    assert seen == [8]
    assert int(labels.sum()) == 0
    # scales 1, 0.7 (8 × 0.7 = 5.6 -> 4) and 1.5 (12): (0.7 + 0.95 + 0.95) / 3 = 0.87 > 0.8, all foreground
    labels, seen = _corrected_labels((0.7, 1.5))
    assert sorted(seen) == [4, 8, 12]
    assert bool((labels == 1).all())


# ------------------------------------------------------------------------------------------ in a run


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg_methods_correction") / "prepared"
    write_prepared(folder)
    return folder


# 0.5: every confident pixel can move; two slices a step: ×0.7 makes the 16×16 slices 8×8, one size divisor
# of the tiny model, where its deepest features are 1×1 (BatchNorm needs more than one value per channel)
ADELE = ("method.name=adele", "method.adele_confidence=0.5", "train.batch_size=2")


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


def _three_scale_probabilities(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """[N, 2, 16, 16] eval-mode mean over scales 1, 0.7 and 1.5 (16×16 slices, divisor 8: 8×8 and 24×24)."""
    model.eval()
    with torch.no_grad():
        logits = [model(images)]
        for size in (8, 24):
            rescaled = model(F.interpolate(images, size=(size, size), **BILINEAR))
            logits.append(F.interpolate(rescaled, size=(16, 16), **BILINEAR))
    model.train()
    foreground = torch.stack([each.sigmoid() for each in logits]).mean(dim=0)
    return torch.cat([1 - foreground, foreground], dim=1)


def test_the_run_gives_the_step_and_the_correction_the_scales_and_the_models_divisor(prepared, tmp_path):
    run = build(config(prepared, *ADELE), tmp_path)  # tiny smp model of encoder depth 3
    assert (run.step.size_divisor, run.correction.size_divisor) == (8, 8)
    assert run.correction.scales == (0.7, 1.5)
    off = build(config(prepared, *ADELE, "method.adele_consistency_weight=0"), tmp_path)
    assert off.correction.scales == ()  # scale 1's probabilities, as without the term
    with pytest.raises(UserError, match=r"^method\.adele_scales: ×0\.7 makes the 16×16 slices 8×8, "):
        build(config(prepared, *ADELE, "train.batch_size=1"), tmp_path)
    build(config(prepared, *ADELE, "train.batch_size=1", "method.adele_consistency_weight=0"), tmp_path)


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
    # the stored labels are the rule applied to the model's eval-mode probabilities, averaged over scales
    probs = _three_scale_probabilities(straight.model, straight.train_set.images)
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
