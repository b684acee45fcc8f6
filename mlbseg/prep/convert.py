"""One case from raw volumes to prepared arrays: read, check, normalise, resize, add noisy masks.

These functions run inside the worker processes of :mod:`mlbseg.prep.prepare` (they take and return only
picklable values). Image and mask geometry is checked from the headers before any output exists
(:func:`mlbseg.prep.discovery.check_pairs`), truncated files and NaN/inf voxels by the reader
(:func:`mlbseg.prep.volumes.read_volume`); here the mask must be 0/1 unless labels are merged
(``label > 0``, e.g. MSD's peripheral and transition zones into one gland), a
:class:`~mlbseg.errors.UserError` naming the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlbseg.errors import UserError
from mlbseg.prep.calibrate import noisy_levels
from mlbseg.prep.discovery import CaseSource
from mlbseg.prep.manifest import load_npz, save_npz
from mlbseg.prep.normalize import apply_window, intensity_window
from mlbseg.prep.resize import resize_mask, resize_slices
from mlbseg.prep.volumes import Geometry, read_volume


@dataclass(frozen=True)
class ConvertOptions:
    """How every case is converted: slice size, image channel, and whether to merge labels (> 0)."""

    size: int
    channel: int
    merge_labels: bool


def volume_to_slices(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Normalise and resize an image volume [S, H, W] (any real dtype) -> float32 [S, size, size] in [0, 1].

    The percentile window is taken at original resolution (returned too), the slices are resized, then the
    window is applied; this is the exact preprocessing of ``image`` in the prepared files.
    """
    window = intensity_window(image)
    return apply_window(resize_slices(image, size), window), window


def binary_mask(mask: np.ndarray, merge: bool, path: Path) -> np.ndarray:
    """The reference mask as uint8 0/1: ``mask > 0`` when merging, else it must already be 0/1."""
    if merge:
        return (mask > 0).astype(np.uint8)
    valid = (mask == 0) | (mask == 1)
    if not valid.all():
        values = ", ".join(f"{value:g}" for value in np.unique(mask[~valid])[:5])
        raise UserError(
            f"{path}: mask has values other than 0 and 1 ({values}); pass --labels merge to use label > 0"
        )
    return mask.astype(np.uint8)


def read_case(source: CaseSource, options: ConvertOptions) -> tuple[np.ndarray, np.ndarray, Geometry]:
    """Read and check one case: image [S, H, W] (file dtype), mask [S, H, W] uint8 0/1, image geometry."""
    image, geometry = read_volume(source.image, options.channel)
    mask, _ = read_volume(source.mask)
    return image, binary_mask(mask, options.merge_labels, source.mask), geometry


def convert_case(
    source: CaseSource, options: ConvertOptions, raw: Path, target: Path
) -> tuple[dict[str, Any], np.ndarray]:
    """Write ``image``, ``mask`` and ``mask_original`` of one case to ``target`` (.npz).

    Returns:
        The case's manifest record (without ``split`` and ``noisy_dice``) and its resized mask
        [S, size, size] uint8 0/1 (what the noise is calibrated on).
    """
    image, mask, geometry = read_case(source, options)
    slices, window = volume_to_slices(image, options.size)
    small_mask = resize_mask(mask, options.size)
    save_npz(target, {"image": slices[:, None], "mask": small_mask, "mask_original": mask})
    record = {
        "id": source.case_id,
        "num_slices": int(image.shape[0]),
        "original_shape": [int(n) for n in image.shape],
        **geometry,
        "intensity_window": list(window),
        "source_files": {
            "image": source.image.relative_to(raw).as_posix(),
            "mask": source.mask.relative_to(raw).as_posix(),
        },
    }
    return record, small_mask


def add_noisy_masks(
    staged: Path, target: Path, case_id: str, *, seed: int, strengths: Mapping[str, float]
) -> dict[str, float]:
    """Read a staged train case, add ``noisy_L1..L3`` at the calibrated strengths, write it to ``target``.

    Returns the realised Dice per level ({"L1": …}); the staged file is removed.
    """
    arrays = load_npz(staged)
    noisy, dice = noisy_levels(arrays["mask"], case_id, seed, strengths)
    arrays.update({f"noisy_{level}": mask for level, mask in noisy.items()})
    save_npz(target, arrays)
    staged.unlink()
    return dice
