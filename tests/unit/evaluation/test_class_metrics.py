"""Labels from probabilities and per-class Dice/HD95 of K > 2 labels (docs/evaluation.md §1–2)."""

import json
import math

import numpy as np
import pytest
import torch

from mlbseg.evaluation.metrics import (
    evaluate_volume,
    foreground_labels,
    labels_from_probabilities,
    summarize,
    volume_dice,
    volume_hd95,
)

SPACING_ZYX = (3.0, 0.7, 0.4)


def _one_hot_probs(labels: np.ndarray, num_labels: int, confidence: float = 0.8) -> np.ndarray:
    """Softmax-like probabilities [S, K, H, W] whose argmax is ``labels`` [S, H, W]."""
    rest = (1.0 - confidence) / (num_labels - 1)
    probs = np.full((labels.shape[0], num_labels, *labels.shape[1:]), rest, np.float32)
    np.put_along_axis(probs, labels[:, None].astype(np.int64), confidence, axis=1)
    return probs


def _zones(shape=(4, 24, 24)) -> np.ndarray:
    """Labels [S, H, W]: a square of 2 (transition zone) inside a larger square of 1 (peripheral zone)."""
    labels = np.zeros(shape, np.uint8)
    labels[1:3, 4:20, 4:20] = 1
    labels[1:3, 8:16, 8:16] = 2
    return labels


def test_labels_are_thresholded_for_one_channel_and_argmax_for_k():
    one = torch.tensor([0.2, 0.5, 0.51]).reshape(1, 1, 1, 3)
    assert labels_from_probabilities(one).tolist() == [[[0, 0, 1]]]  # strictly above 0.5
    k = torch.tensor([[0.1, 0.6, 0.3], [0.2, 0.2, 0.6], [0.7, 0.2, 0.1]]).T.reshape(1, 3, 1, 3)
    assert labels_from_probabilities(k).tolist() == [[[1, 2, 0]]]
    assert foreground_labels(1) == [1]
    assert foreground_labels(4) == [1, 2, 3]
    with pytest.raises(ValueError, match=r"\[S, C_out, H, W\]"):
        labels_from_probabilities(torch.zeros(3, 4, 4))


def test_each_class_is_scored_on_its_own_and_the_mean_is_over_foreground_classes():
    reference = _zones()
    prediction = reference.copy()
    prediction[1:3, 8:16, 8:12] = 1  # half of the transition zone predicted as peripheral zone
    probs = _one_hot_probs(prediction, 3)  # on the original grid: the resize is the identity
    scores = evaluate_volume(probs, reference, SPACING_ZYX, ["PZ", "TZ"])
    assert list(scores) == ["dice", "hd95", "classes"]
    assert list(scores["classes"]) == ["PZ", "TZ"]
    for name, value in (("PZ", 1), ("TZ", 2)):
        pred, ref = prediction == value, reference == value
        assert scores["classes"][name] == {
            "dice": volume_dice(pred, ref),
            "hd95": volume_hd95(pred, ref, SPACING_ZYX),
        }
    assert scores["classes"]["TZ"]["dice"] == pytest.approx(2 * 64 / (64 + 128))  # 4×8 of 8×8, two slices
    assert scores["classes"]["PZ"]["dice"] < 1.0
    assert scores["dice"] == pytest.approx(np.mean([scores["classes"][c]["dice"] for c in ("PZ", "TZ")]))
    assert scores["hd95"] == pytest.approx(np.mean([scores["classes"][c]["hd95"] for c in ("PZ", "TZ")]))


def test_a_class_missing_from_the_prediction_is_infinite_and_makes_the_mean_hd95_infinite():
    reference = _zones()
    prediction = np.where(reference == 2, 1, reference)  # no transition zone predicted at all
    scores = evaluate_volume(_one_hot_probs(prediction, 3), reference, SPACING_ZYX, ["PZ", "TZ"])
    assert scores["classes"]["TZ"] == {"dice": 0.0, "hd95": math.inf}
    assert scores["hd95"] == math.inf
    empty_both = evaluate_volume(
        _one_hot_probs(np.zeros_like(reference), 3), np.zeros_like(reference), SPACING_ZYX
    )
    assert empty_both["classes"] == {"1": {"dice": 1.0, "hd95": 0.0}, "2": {"dice": 1.0, "hd95": 0.0}}


def test_probabilities_are_resized_per_channel_before_the_argmax():
    # Two labels' probabilities on a 4-column grid, upsampled to 8 columns: resizing then argmax moves the
    # boundary to where the interpolated probabilities cross, not to a block edge of the 4-column labels.
    p1 = np.array([0.9, 0.9, 0.45, 0.1], np.float32)
    p2 = np.array([0.05, 0.05, 0.5, 0.85], np.float32)
    probs = np.stack([1 - p1 - p2, p1, p2])[None, :, None, :].repeat(4, axis=2)  # [1, 3, 4, 4]
    reference = np.zeros((1, 4, 8), np.uint8)
    reference[..., :5] = 1  # columns at 0.9, 0.9, 0.9, 0.7875, 0.5625 of label 1: argmax 1
    reference[..., 5:] = 2
    scores = evaluate_volume(probs, reference, (1.0, 1.0, 1.0), ["a", "b"])
    assert scores["dice"] == 1.0


def test_class_names_must_match_the_outputs():
    with pytest.raises(ValueError, match="class names"):
        evaluate_volume(_one_hot_probs(_zones(), 3), _zones(), SPACING_ZYX, ["only one"])


def test_summary_has_the_mean_and_each_class_and_stays_json_safe():
    per_case = {
        "a": {
            "dice": 0.7,
            "hd95": 3.0,
            "classes": {"PZ": {"dice": 0.6, "hd95": 4.0}, "TZ": {"dice": 0.8, "hd95": 2.0}},
        },
        "b": {
            "dice": 0.4,
            "hd95": math.inf,
            "classes": {"PZ": {"dice": 0.8, "hd95": 1.0}, "TZ": {"dice": 0.0, "hd95": math.inf}},
        },
    }
    summary = summarize(per_case)
    assert list(summary) == ["dice", "hd95", "classes"]
    assert summary["dice"] == {
        "mean": pytest.approx(0.55),
        "std": pytest.approx(0.15),
        "n": 2,
        "n_nonfinite": 0,
    }
    assert summary["hd95"] == {"mean": 3.0, "std": 0.0, "n": 1, "n_nonfinite": 1}
    assert list(summary["classes"]) == ["PZ", "TZ"]
    assert summary["classes"]["PZ"]["dice"]["mean"] == pytest.approx(0.7)
    assert summary["classes"]["TZ"]["hd95"] == {"mean": 2.0, "std": 0.0, "n": 1, "n_nonfinite": 1}
    json.dumps(summary, allow_nan=False)
    assert "classes" not in summarize({"a": {"dice": 0.5, "hd95": 1.0}})  # binary: as before
