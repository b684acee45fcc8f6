"""Per-volume Dice and HD95 at the original geometry and their summary over test cases (docs/evaluation.md).

Conventions (PROMISE12 has no empty reference volume, so they matter only for failed predictions or for
other data):

- Dice of two empty masks is 1.0 (nothing to find, nothing found; MLB-Seg's ``empty_score=1.0``). nnU-Net
  and MONAI report NaN there instead.
- HD95 of two empty masks is 0.0, and HD95 is ``inf`` when exactly one mask is empty (an empty prediction
  of a non-empty gland is infinitely far from it). ``inf`` is kept rather than NaN so that a failed case
  cannot vanish silently from a NaN-skipping mean; :func:`summarize` counts such values separately.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mlbseg.evaluation.resample import probabilities_to_original

THRESHOLD = 0.5
CLASSES = "classes"  # per-class entry of a case's scores and of the summary (K > 2 labels)


def _as_tensor(mask: np.ndarray | Tensor) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(mask) if isinstance(mask, np.ndarray) else mask)


def _as_bool_tensor(mask: np.ndarray | Tensor) -> Tensor:
    return _as_tensor(mask).bool()


def _check_shapes(pred: Tensor, ref: Tensor) -> None:
    if pred.shape != ref.shape or pred.ndim != 3:
        raise ValueError(
            f"pred and ref must both be [S, H, W]; got {tuple(pred.shape)} and {tuple(ref.shape)}"
        )


def volume_dice(pred: np.ndarray | Tensor, ref: np.ndarray | Tensor) -> float:
    """3-D Dice 2|P∩R| / (|P| + |R|) over a whole volume.

    Args:
        pred: Binary prediction [S, H, W] (bool or 0/1 of any dtype; nonzero counts as foreground).
        ref: Binary reference [S, H, W], same shape, same device if tensors.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty (see the module docstring).

    Example:
        >>> import numpy as np
        >>> pred = np.zeros((1, 2, 4), np.uint8); pred[0, :, :2] = 1
        >>> ref = np.zeros((1, 2, 4), np.uint8); ref[0, :, 1:] = 1
        >>> volume_dice(pred, ref)
        0.4
    """
    pred_t, ref_t = _as_bool_tensor(pred), _as_bool_tensor(ref)
    _check_shapes(pred_t, ref_t)
    total = int(pred_t.sum()) + int(ref_t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((pred_t & ref_t).sum()) / total


def volume_hd95(pred: np.ndarray | Tensor, ref: np.ndarray | Tensor, spacing_zyx: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in millimetres, via MONAI.

    Surface voxels of each mask are those removed by a binary erosion; the result is the larger of the two
    directed 95th percentiles of surface-to-surface Euclidean distances, with voxel size ``spacing_zyx``.

    Args:
        pred: Binary prediction [S, H, W] (nonzero = foreground), indexed (z, y, x).
        ref: Binary reference [S, H, W], same shape.
        spacing_zyx: Voxel size in mm along (z, y, x), i.e. the file header's (x, y, z) spacing reversed.

    Returns:
        HD95 in mm, ≥ 0; 0.0 when both masks are empty, ``inf`` when exactly one is (module docstring).
    """
    pred_t, ref_t = _as_bool_tensor(pred), _as_bool_tensor(ref)
    _check_shapes(pred_t, ref_t)
    if len(spacing_zyx) != 3:
        raise ValueError(f"spacing_zyx must have 3 entries (z, y, x), got {spacing_zyx!r}")
    pred_empty, ref_empty = not bool(pred_t.any()), not bool(ref_t.any())
    if pred_empty or ref_empty:
        return 0.0 if pred_empty and ref_empty else math.inf
    from monai.metrics import compute_hausdorff_distance  # NOTE: imported here; monai takes seconds to load

    with warnings.catch_warnings():
        # MONAI 1.5-1.6 passes its own deprecated argument internally; nothing a caller can act on.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        distance = compute_hausdorff_distance(
            # [B=1, C=1, S, H, W], one-hot with the foreground channel only; on the CPU, where MONAI needs no
            # optional GPU packages (cuCIM) for the distance transform.
            pred_t[None, None].float().cpu(),
            ref_t[None, None].float().cpu(),
            include_background=True,
            percentile=95,
            spacing=[float(s) for s in spacing_zyx],
        )
    return float(distance.item())


def labels_from_probabilities(probs: Tensor) -> Tensor:
    """Label values from probabilities (docs/evaluation.md §1 step 3).

    Args:
        probs: [S, C_out, H, W] float: C_out = 1 the foreground probability (sigmoid), C_out = K the softmax
            over K labels.

    Returns:
        [S, H, W] int64 label values: ``p > 0.5`` (strictly) for one channel, the argmax over the labels for
        K (ties go to the lower label value).
    """
    if probs.ndim != 4:
        raise ValueError(f"probs must be [S, C_out, H, W], got shape {tuple(probs.shape)}")
    if probs.shape[1] == 1:
        return (probs[:, 0] > THRESHOLD).long()
    return probs.argmax(dim=1)


def foreground_labels(num_outputs: int) -> list[int]:
    """The foreground label values a model with ``num_outputs`` logit maps predicts: [1] or 1..K-1.

    Example:
        >>> foreground_labels(1), foreground_labels(3)
        ([1], [1, 2])
    """
    return [1] if num_outputs == 1 else list(range(1, num_outputs))


def volume_labels(probs: np.ndarray | Tensor, original_hw: tuple[int, int]) -> Tensor:
    """Slice-grid probabilities [S, h, w] or [S, C_out, h, w] -> labels [S, H, W] int64 at the original size.

    The probabilities are resized first (:func:`~mlbseg.evaluation.resample.probabilities_to_original`),
    then turned into labels (:func:`labels_from_probabilities`): never the other way round.
    """
    stack = _as_tensor(probs)
    stack = stack.unsqueeze(1) if stack.ndim == 3 else stack
    return labels_from_probabilities(probabilities_to_original(stack, original_hw))


def evaluate_volume(
    probs: np.ndarray | Tensor,
    mask_original: np.ndarray | Tensor,
    spacing_zyx: Sequence[float],
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Score one test volume by the protocol of docs/evaluation.md §1, per foreground class.

    Resize the slice probabilities back to the original in-plane size, turn them into labels (threshold
    0.5, strictly greater, for one foreground channel; argmax for K labels), then compute 3-D Dice and HD95
    of each foreground class against the untouched reference.

    Args:
        probs: Probabilities on the prepared grid (e.g. 144²): [S, h, w] or [S, 1, h, w] foreground
            probabilities (binary data), or [S, K, h, w] softmax probabilities over K > 2 labels.
        mask_original: Reference label values [S, H, W] at original resolution, indexed (z, y, x); binary
            data: 0/1 (any nonzero value counts as foreground).
        spacing_zyx: Original voxel size in mm along (z, y, x).
        class_names: Names of the foreground labels 1..K-1 (``label_names(manifest)[1:]``); default
            ``"1"``, ``"2"``, ... Only used for K > 2.

    Returns:
        ``{"dice": float in [0, 1], "hd95": float mm ≥ 0 or inf}``: for binary data the one class, for
        K > 2 the mean over the foreground classes (HD95 ``inf`` when any class has ``inf``), plus
        ``"classes": {name: {"dice", "hd95"}}``, each class with the empty-mask conventions of the module
        docstring.
    """
    if probs.shape[0] != mask_original.shape[0]:
        raise ValueError(f"probs has {probs.shape[0]} slices but mask_original has {mask_original.shape[0]}")
    ref_values = _as_tensor(mask_original)
    num_outputs = 1 if probs.ndim == 3 else int(probs.shape[1])
    pred_values = volume_labels(probs, (ref_values.shape[1], ref_values.shape[2])).to(ref_values.device)
    if num_outputs == 1:
        pred, ref = pred_values.bool(), ref_values.bool()
        return {"dice": volume_dice(pred, ref), "hd95": volume_hd95(pred, ref, spacing_zyx)}
    values = foreground_labels(num_outputs)
    names = [str(value) for value in values] if class_names is None else list(class_names)
    if len(names) != len(values):
        raise ValueError(f"got {len(names)} class names for {len(values)} foreground classes")
    classes = {
        name: {
            "dice": volume_dice(pred_values == value, ref_values == value),
            "hd95": volume_hd95(pred_values == value, ref_values == value, spacing_zyx),
        }
        for name, value in zip(names, values, strict=True)
    }
    return {
        "dice": float(np.mean([scores["dice"] for scores in classes.values()])),
        "hd95": float(np.mean([scores["hd95"] for scores in classes.values()])),
        "classes": classes,
    }


def mean_class_dice(pred_values: Tensor, ref_values: np.ndarray | Tensor, num_outputs: int) -> float:
    """The mean over foreground classes of the 3-D Dice of label maps [S, H, W] (one class for binary)."""
    ref = _as_tensor(ref_values).to(pred_values.device)
    if num_outputs == 1:
        return volume_dice(pred_values.bool(), ref.bool())
    return float(np.mean([volume_dice(pred_values == k, ref == k) for k in foreground_labels(num_outputs)]))


def summarize(per_case: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation of each metric over cases, with non-finite values reported, not averaged.

    Args:
        per_case: ``{case_id: {metric: value}}``, e.g. the outputs of :func:`evaluate_volume`. Cases may
            lack a metric; values may be ``inf`` or NaN. A ``"classes"`` entry ({name: {metric: value}},
            K > 2 labels) is summarised class by class.

    Returns:
        ``{metric: {"mean", "std", "n", "n_nonfinite"}}`` for every metric seen, in first-seen order, and
        ``"classes": {name: {metric: {...}}}`` when the cases have classes. ``mean``/``std`` (population
        std, ddof = 0) are taken over the ``n`` finite values and are ``None`` when there are none;
        ``n_nonfinite`` counts the ``inf``/NaN values left out, so a failed case stays visible. All numbers
        are plain Python floats/ints (JSON-safe).

    Example:
        >>> summarize({"a": {"dice": 0.8, "hd95": 4.0}, "b": {"dice": 0.6, "hd95": float("inf")}})["hd95"]
        {'mean': 4.0, 'std': 0.0, 'n': 1, 'n_nonfinite': 1}
    """
    names = list(dict.fromkeys(name for metrics in per_case.values() for name in metrics))
    summary: dict[str, Any] = {}
    for name in names:
        if name == CLASSES:
            continue
        values = np.array([m[name] for m in per_case.values() if name in m], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[name] = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std()) if finite.size else None,
            "n": int(finite.size),
            "n_nonfinite": int(values.size - finite.size),
        }
    class_names = list(dict.fromkeys(c for metrics in per_case.values() for c in metrics.get(CLASSES, {})))
    if class_names:
        summary[CLASSES] = {
            name: summarize(
                {case: m[CLASSES][name] for case, m in per_case.items() if name in m.get(CLASSES, {})}
            )
            for name in class_names
        }
    return summary
