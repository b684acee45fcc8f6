"""mlbseg.seg.inference: slice-wise probabilities in eval mode, and the validation Dice at original size."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from mlbseg.seg.data import Volume
from mlbseg.seg.inference import predict_probabilities, validation_dice


class Recorder(nn.Module):
    """Returns its input as the logits; records the batch size and training flag of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, bool]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append((images.shape[0], self.training))
        return images


def _bn_net() -> nn.Module:
    """Conv + BatchNorm with running statistics far from the batch statistics (train ≠ eval output)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 1, 1))
    net[1].running_mean.fill_(0.7)
    net[1].running_var.fill_(4.0)
    return net


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _column_volume(case_id: str, probs_by_column, reference_columns, slices=2) -> Volume:
    """Slices whose logits are constant down each column of a 4×4 grid; reference on an 8×8 grid."""
    logits = torch.tensor([_logit(p) for p in probs_by_column], dtype=torch.float32)
    images = logits.expand(slices, 1, 4, 4).clone()
    mask = np.zeros((slices, 8, 8), np.uint8)
    mask[:, :, list(reference_columns)] = 1
    return Volume(case_id, images, mask, (1.0, 1.0, 1.0))


def test_probabilities_are_the_sigmoid_of_the_logits_per_slice():
    images = torch.linspace(-4, 4, 3 * 5 * 6).reshape(3, 1, 5, 6)
    probs = predict_probabilities(Recorder(), images)
    assert probs.shape == (3, 1, 5, 6)  # [S, C_out, h, w]: one foreground channel
    assert probs.dtype == torch.float32
    assert not probs.requires_grad
    assert torch.equal(probs, images.sigmoid())


def test_probabilities_of_k_logits_are_their_softmax_over_the_labels():
    images = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(3))
    probs = predict_probabilities(Recorder(), images)  # the identity: 3 input channels are 3 logits
    assert probs.shape == (2, 3, 4, 5)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 4, 5))
    assert torch.equal(probs, images.softmax(dim=1))
    assert not torch.equal(probs, images.sigmoid())


def test_prediction_runs_in_eval_mode_and_restores_the_mode():
    model = Recorder().train()
    predict_probabilities(model, torch.zeros(2, 1, 4, 4))
    assert model.calls == [(2, False)]
    assert model.training
    model.eval()
    predict_probabilities(model, torch.zeros(2, 1, 4, 4))
    assert not model.training


def test_the_mode_is_restored_when_the_model_fails():
    class Failing(nn.Module):
        def forward(self, images):
            raise RuntimeError("boom")

    model = Failing().train()
    with pytest.raises(RuntimeError, match="boom"):
        predict_probabilities(model, torch.zeros(1, 1, 4, 4))
    assert model.training


def test_slices_go_through_in_chunks_of_chunk_size():
    model = Recorder()
    predict_probabilities(model, torch.zeros(7, 1, 4, 4), chunk_size=3)
    assert [size for size, _ in model.calls] == [3, 3, 1]


def test_chunking_does_not_change_the_probabilities_and_leaves_batchnorm_statistics_alone():
    model = _bn_net().train()
    images = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    results = [predict_probabilities(model, images, chunk_size=size) for size in (1, 2, 5, 32)]
    for other in results[1:]:
        torch.testing.assert_close(other, results[0], rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        expected = model.eval()(images).sigmoid()  # eval: the running statistics, not the batch's
    torch.testing.assert_close(results[0], expected, rtol=1e-6, atol=1e-7)
    assert torch.equal(model[1].running_mean, torch.full((3,), 0.7))
    assert torch.equal(model[1].running_var, torch.full((3,), 4.0))


def test_amp_dtype_autocasts_the_forward_and_returns_float32():
    model = _bn_net()
    images = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    full = predict_probabilities(model, images)
    half = predict_probabilities(model, images, amp_dtype=torch.bfloat16)
    assert half.dtype == torch.float32
    assert not torch.equal(half, full)  # the convolutions ran in bf16
    torch.testing.assert_close(half, full, rtol=0, atol=2e-2)


def test_validation_dice_resizes_probabilities_before_thresholding():
    # Columns 0.9, 0.9, 0.4, 0.4 upsampled bilinearly to 8 columns: 0.9, 0.9, 0.9, 0.775, 0.525, 0.4, ...
    # Resizing the probabilities gives foreground columns 0-4; thresholding first would give 0-3.
    volume = _column_volume("Case00", [0.9, 0.9, 0.4, 0.4], reference_columns=range(5))
    assert validation_dice(Recorder(), [volume]) == 1.0
    shifted = _column_volume("Case01", [0.9, 0.9, 0.4, 0.4], reference_columns=range(4))
    assert validation_dice(Recorder(), [shifted]) == pytest.approx(2 * 4 / (5 + 4), abs=1e-12)


def test_validation_dice_is_the_mean_of_the_per_volume_dice():
    volumes = [
        _column_volume("Case00", [0.99, 0.01, 0.01, 0.01], reference_columns=range(2)),  # 2 of 2 columns
        _column_volume("Case01", [0.99, 0.99, 0.99, 0.99], reference_columns=range(2)),  # 8 vs 2 columns
        _column_volume("Case02", [0.01, 0.01, 0.01, 0.01], reference_columns=()),  # both empty: 1.0
    ]
    scores = [1.0, 2 * 2 / (8 + 2), 1.0]
    assert validation_dice(Recorder(), volumes) == pytest.approx(sum(scores) / 3, abs=1e-12)
    assert isinstance(validation_dice(Recorder(), volumes[:1]), float)


def test_validation_dice_threshold_is_strictly_above_one_half():
    # logit 0 -> probability exactly 0.5 everywhere: nothing is foreground, Dice 0 against a full reference
    images = torch.zeros(1, 1, 4, 4)
    volume = Volume("Case00", images, np.ones((1, 8, 8), np.uint8), (1.0, 1.0, 1.0))
    assert validation_dice(Recorder(), [volume]) == 0.0


def _zones_volume(case_id: str, logits_by_column, reference_by_column) -> Volume:
    """3 labels: logits [3, 4 columns] constant down each column (4×4 grid), reference 8×8 by column pair."""
    logits = torch.tensor(logits_by_column, dtype=torch.float32)  # [3, 4]
    images = logits[None, :, None, :].expand(2, 3, 4, 4).clone()  # [S=2, 3, 4, 4]
    mask = np.repeat(np.asarray(reference_by_column, np.uint8), 2)[None, None, :].repeat(8, axis=1)
    return Volume(case_id, images, np.repeat(mask, 2, axis=0), (1.0, 1.0, 1.0))


def test_validation_dice_of_k_labels_is_the_mean_over_foreground_classes():
    # argmax per column: labels 1, 1, 2, 0 -> at 8 columns 1, 1, 1, 1, 2, 2, 0, 0 (nearest to the centres)
    logits = [[0.0, 0.0, 0.0, 5.0], [5.0, 5.0, 0.0, 0.0], [0.0, 0.0, 5.0, 0.0]]
    exact = _zones_volume("Case00", logits, reference_by_column=[1, 1, 2, 0])
    assert validation_dice(Recorder(), [exact]) == 1.0
    # reference: class 1 in columns 0-1 (2 of the 4 predicted), class 2 in 4-7 (2 predicted of 4)
    half = _zones_volume("Case01", logits, reference_by_column=[1, 0, 2, 2])
    class_1, class_2 = 2 * 2 / (4 + 2), 2 * 2 / (2 + 4)
    assert validation_dice(Recorder(), [half]) == pytest.approx((class_1 + class_2) / 2, abs=1e-12)
    # a class absent from both prediction and reference scores 1.0 (docs/evaluation.md §1.1), per class
    no_two = _zones_volume("Case02", [[0.0, 0, 0, 5], [5, 5, 5, 0], [0, 0, 0, 0]], [1, 1, 1, 0])
    assert validation_dice(Recorder(), [no_two]) == 1.0
