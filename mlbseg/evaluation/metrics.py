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

import numpy as np
import torch
from torch import Tensor

from mlbseg.evaluation.resample import probabilities_to_original

THRESHOLD = 0.5


def _as_bool_tensor(mask: np.ndarray | Tensor) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(mask) if isinstance(mask, np.ndarray) else mask).bool()


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


def evaluate_volume(
    probs: np.ndarray | Tensor, mask_original: np.ndarray | Tensor, spacing_zyx: Sequence[float]
) -> dict[str, float]:
    """Score one test volume by the protocol of docs/evaluation.md §1.

    Resize the slice probabilities back to the original in-plane size, threshold at 0.5 (strictly
    greater), then compute 3-D Dice and HD95 against the untouched reference.

    Args:
        probs: Foreground probabilities [S, h, w] in [0, 1] on the prepared grid (e.g. 144²).
        mask_original: Reference mask [S, H, W] (0/1) at original resolution, indexed (z, y, x).
        spacing_zyx: Original voxel size in mm along (z, y, x).

    Returns:
        ``{"dice": float in [0, 1], "hd95": float mm ≥ 0 or inf}``.
    """
    if probs.shape[0] != mask_original.shape[0]:
        raise ValueError(f"probs has {probs.shape[0]} slices but mask_original has {mask_original.shape[0]}")
    ref = _as_bool_tensor(mask_original)
    full = probabilities_to_original(probs, (ref.shape[1], ref.shape[2]))
    pred = torch.as_tensor(full).to(ref.device) > THRESHOLD  # [S, H, W] bool
    return {"dice": volume_dice(pred, ref), "hd95": volume_hd95(pred, ref, spacing_zyx)}


def summarize(per_case: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float | int | None]]:
    """Mean and standard deviation of each metric over cases, with non-finite values reported, not averaged.

    Args:
        per_case: ``{case_id: {metric: value}}``, e.g. the outputs of :func:`evaluate_volume`. Cases may
            lack a metric; values may be ``inf`` or NaN.

    Returns:
        ``{metric: {"mean", "std", "n", "n_nonfinite"}}`` for every metric seen, in first-seen order.
        ``mean``/``std`` (population std, ddof = 0) are taken over the ``n`` finite values and are ``None``
        when there are none; ``n_nonfinite`` counts the ``inf``/NaN values left out, so a failed case stays
        visible. All numbers are plain Python floats/ints (JSON-safe).

    Example:
        >>> summarize({"a": {"dice": 0.8, "hd95": 4.0}, "b": {"dice": 0.6, "hd95": float("inf")}})["hd95"]
        {'mean': 4.0, 'std': 0.0, 'n': 1, 'n_nonfinite': 1}
    """
    names = list(dict.fromkeys(name for metrics in per_case.values() for name in metrics))
    summary: dict[str, dict[str, float | int | None]] = {}
    for name in names:
        values = np.array([m[name] for m in per_case.values() if name in m], dtype=np.float64)
        finite = values[np.isfinite(values)]
        summary[name] = {
            "mean": float(finite.mean()) if finite.size else None,
            "std": float(finite.std()) if finite.size else None,
            "n": int(finite.size),
            "n_nonfinite": int(values.size - finite.size),
        }
    return summary
