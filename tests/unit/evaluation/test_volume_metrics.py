import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.metrics import DiceMetric

from mlbseg.evaluation.metrics import evaluate_volume, summarize, volume_dice, volume_hd95

SPACING_ZYX = (3.0, 0.7, 0.4)  # distinct per axis, so a swapped axis order changes the distance


def _ellipsoid_gland(shape_zyx, spacing_zyx):
    """A prostate-like ellipsoid (semi-axes 18 × 20 × 25 mm (z, y, x)), off-centre, as uint8 [S, H, W]."""
    z, y, x = (np.arange(n) * s for n, s in zip(shape_zyx, spacing_zyx, strict=True))
    centre = [0.5 * n * s for n, s in zip(shape_zyx, spacing_zyx, strict=True)]
    centre[1] += 8.0
    dist = (
        ((z[:, None, None] - centre[0]) / 18.0) ** 2
        + ((y[None, :, None] - centre[1]) / 20.0) ** 2
        + ((x[None, None, :] - centre[2]) / 25.0) ** 2
    )
    return (dist <= 1.0).astype(np.uint8)


def _prepare_like_144(mask):
    """What prepare stores as `mask`: area-preserving bilinear resize of the whole slice to 144², > 0.5."""
    small = F.interpolate(
        torch.from_numpy(mask).float()[:, None],
        size=(144, 144),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )[:, 0]
    return small.numpy(), (small > 0.5).float().numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_matches_monai(seed):
    rng = np.random.default_rng(seed)
    pred = rng.random((6, 20, 24)) < 0.3 + 0.2 * seed
    ref = rng.random((6, 20, 24)) < 0.4
    metric = DiceMetric(include_background=True, reduction="none")
    expected = metric(torch.from_numpy(pred)[None, None].float(), torch.from_numpy(ref)[None, None].float())
    assert volume_dice(pred, ref) == pytest.approx(float(expected.item()), abs=1e-6)
    assert volume_dice(torch.from_numpy(pred), torch.from_numpy(ref)) == pytest.approx(float(expected.item()))


def test_dice_conventions_for_empty_masks():
    empty, full = np.zeros((2, 4, 4), np.uint8), np.ones((2, 4, 4), np.uint8)
    assert volume_dice(empty, empty) == 1.0
    assert volume_dice(empty, full) == 0.0
    assert volume_dice(full, full) == 1.0


@pytest.mark.parametrize(
    ("shape_zyx", "spacing_zyx"), [((20, 320, 320), (3.6, 0.5, 0.5)), ((20, 512, 512), (3.0, 0.3, 0.3))]
)
def test_prepare_grid_truth_scores_high_at_original_resolution(shape_zyx, spacing_zyx):
    mask = _ellipsoid_gland(shape_zyx, spacing_zyx)
    soft, binary = _prepare_like_144(mask)
    pixel_144_mm = shape_zyx[2] * spacing_zyx[2] / 144
    for probs in (binary, soft):
        scores = evaluate_volume(probs, mask, spacing_zyx)
        assert scores["dice"] >= 0.97
        assert scores["hd95"] <= pixel_144_mm


def test_evaluate_volume_thresholds_probabilities_strictly_above_half():
    mask = np.zeros((1, 8, 8), np.uint8)
    mask[0, :, :4] = 1
    probs = np.where(mask == 1, 0.51, 0.5).astype(np.float32)
    assert evaluate_volume(probs, mask, SPACING_ZYX)["dice"] == 1.0


def test_evaluate_volume_accepts_tensors_like_arrays():
    mask = _ellipsoid_gland((6, 96, 96), (3.0, 1.0, 1.0))
    _, binary = _prepare_like_144(mask)
    from_numpy = evaluate_volume(binary, mask, (3.0, 1.0, 1.0))
    from_torch = evaluate_volume(torch.from_numpy(binary), torch.from_numpy(mask), (3.0, 1.0, 1.0))
    assert from_torch == pytest.approx(from_numpy)


def test_hd95_is_zero_for_identical_masks():
    mask = _ellipsoid_gland((8, 64, 64), (3.0, 1.5, 1.5))
    assert volume_hd95(mask, mask.copy(), SPACING_ZYX) == 0.0


@pytest.mark.parametrize(
    ("axis", "shift", "expected_mm"),
    [(0, 1, 3.0), (1, 1, 0.7), (2, 2, 0.8)],  # z by one slice, y by one row, x by two columns
)
def test_hd95_of_a_shifted_plate_is_the_shift_in_mm(axis, shift, expected_mm):
    # A one-voxel-thick plate normal to `axis`: every surface voxel of the shifted copy is exactly `shift`
    # voxels from the nearest reference voxel, so HD95 is the shift times that axis's spacing.
    ref = np.zeros((8, 16, 16), np.uint8)
    index = [slice(2, 6), slice(4, 12), slice(4, 12)]
    index[axis] = 3
    ref[tuple(index)] = 1
    pred = np.roll(ref, shift, axis=axis)
    assert volume_hd95(pred, ref, SPACING_ZYX) == pytest.approx(expected_mm)


def test_hd95_conventions_for_empty_masks():
    empty = np.zeros((4, 8, 8), np.uint8)
    blob = empty.copy()
    blob[1:3, 2:6, 2:6] = 1
    assert volume_hd95(empty, blob, SPACING_ZYX) == math.inf
    assert volume_hd95(blob, empty, SPACING_ZYX) == math.inf
    assert volume_hd95(empty, empty, SPACING_ZYX) == 0.0


def test_shape_and_spacing_are_checked():
    with pytest.raises(ValueError, match="must both be"):
        volume_dice(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)))
    with pytest.raises(ValueError, match="3 entries"):
        volume_hd95(np.ones((2, 4, 4)), np.ones((2, 4, 4)), (1.0, 1.0))
    with pytest.raises(ValueError, match="slices"):
        evaluate_volume(np.zeros((3, 144, 144)), np.zeros((4, 200, 200)), SPACING_ZYX)


def test_empty_prediction_is_reported_not_averaged():
    mask = _ellipsoid_gland((6, 96, 96), (3.0, 1.0, 1.0))
    failed = evaluate_volume(np.zeros((6, 144, 144), np.float32), mask, (3.0, 1.0, 1.0))
    assert failed == {"dice": 0.0, "hd95": math.inf}
    summary = summarize(
        {"Case01": {"dice": 0.9, "hd95": 3.0}, "Case02": {"dice": 0.7, "hd95": 5.0}, "Case03": failed}
    )
    assert summary["dice"]["mean"] == pytest.approx(np.mean([0.9, 0.7, 0.0]))
    assert summary["dice"]["std"] == pytest.approx(np.std([0.9, 0.7, 0.0]))
    assert summary["dice"]["n"] == 3
    assert summary["dice"]["n_nonfinite"] == 0
    assert summary["hd95"] == {"mean": 4.0, "std": 1.0, "n": 2, "n_nonfinite": 1}
    json.dumps(summary, allow_nan=False)  # JSON-safe: no inf or NaN in the summary itself


def test_summarize_handles_missing_and_all_nonfinite_metrics():
    summary = summarize({"a": {"dice": 0.5, "hd95": math.nan}, "b": {"dice": 0.7}})
    assert list(summary) == ["dice", "hd95"]
    assert summary["dice"]["mean"] == pytest.approx(0.6)
    assert summary["hd95"] == {"mean": None, "std": None, "n": 0, "n_nonfinite": 1}
    assert summarize({}) == {}


@pytest.mark.gpu
def test_evaluate_volume_on_cuda_tensors_matches_cpu():
    mask = _ellipsoid_gland((6, 96, 96), (3.0, 1.0, 1.0))
    soft, _ = _prepare_like_144(mask)
    on_cpu = evaluate_volume(soft, mask, (3.0, 1.0, 1.0))
    on_gpu = evaluate_volume(torch.from_numpy(soft).cuda(), torch.from_numpy(mask).cuda(), (3.0, 1.0, 1.0))
    assert on_gpu == pytest.approx(on_cpu, abs=1e-4)
