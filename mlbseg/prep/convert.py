"""One case from raw volumes to prepared arrays: read, check, normalise, resize, add noisy masks.

These functions run inside the worker processes of :mod:`mlbseg.prep.prepare` (they take and return only
picklable values). The grids of a case's files are checked from the headers before any output exists
(:func:`mlbseg.prep.discovery.check_pairs`), truncated files and NaN/inf voxels by the reader
(:func:`mlbseg.prep.volumes.read_volume`). Here every mask is read as a label map by the run's label
mode (:func:`label_map`), a :class:`~mlbseg.errors.UserError` naming the file for values it does not
allow: ``binary`` needs 0/1, ``merge`` takes ``label > 0`` (e.g. MSD's peripheral and transition zones
into one gland), ``keep`` keeps the values as classes 0..K-1.
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
from mlbseg.prep.label_noise import foreground_dice, noisy_label_levels
from mlbseg.prep.manifest import load_npz, save_npz
from mlbseg.prep.noise_models import noise_model_by_name
from mlbseg.prep.normalize import apply_window, intensity_window
from mlbseg.prep.resize import resize_labels, resize_mask, resize_slices
from mlbseg.prep.volumes import Geometry, read_channels, read_volume

BINARY, MERGE, KEEP = "binary", "merge", "keep"
MAX_LABELS = 256  # label values are stored as uint8


@dataclass(frozen=True)
class ConvertOptions:
    """How every case is converted.

    Attributes:
        size: Slice size in pixels (square).
        channels: The image channels stacked, in order.
        label_mode: ``binary``, ``merge`` or ``keep`` (module docstring).
        num_labels: ``keep`` with declared labels (dataset.json): K, the values allowed are 0..K-1;
            None: any value 0..255 (the dataset's labels are the values found, checked afterwards).
    """

    size: int
    channels: tuple[int, ...]
    label_mode: str
    num_labels: int | None = None


def volume_to_slices(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Normalise and resize an image volume [S, H, W] (any real dtype) -> float32 [S, size, size] in [0, 1].

    The percentile window is taken at original resolution (returned too), the slices are resized, then the
    window is applied; this is the exact preprocessing of ``image`` in the prepared files.
    """
    window = intensity_window(image)
    return apply_window(resize_slices(image, size), window), window


def channels_to_slices(channels: np.ndarray, size: int) -> tuple[np.ndarray, list[list[float]]]:
    """:func:`volume_to_slices` for each channel of [C, S, H, W]: float32 [S, C, size, size] and windows.

    Every channel gets its own percentile window (returned as ``[[low, high], ...]``, one per channel).
    """
    converted = [volume_to_slices(channel, size) for channel in channels]
    slices = np.stack([array for array, _ in converted], axis=1)  # [S, C, size, size]
    return slices, [list(window) for _, window in converted]


def _shown_values(values: np.ndarray) -> str:
    return ", ".join(f"{value:g}" for value in np.unique(values)[:5])


def label_map(mask: np.ndarray, options: ConvertOptions, path: Path) -> np.ndarray:
    """A mask as uint8 label values [S, H, W] by ``options.label_mode``; UserError naming ``path``.

    ``merge``: ``mask > 0``; ``binary``: the values must be 0/1; ``keep``: non-negative integers, below
    ``options.num_labels`` where the dataset declares its labels.
    """
    if options.label_mode == MERGE:
        return (mask > 0).astype(np.uint8)
    if options.label_mode == BINARY:
        valid = (mask == 0) | (mask == 1)
        if not valid.all():
            raise UserError(
                f"{path}: mask has values other than 0 and 1 ({_shown_values(mask[~valid])}); "
                "pass --labels merge to use label > 0, or --labels keep for several classes"
            )
        return mask.astype(np.uint8)
    limit = options.num_labels or MAX_LABELS
    valid = (mask >= 0) & (mask < limit) & (mask == np.round(mask))
    if not valid.all():
        allowed = f"the dataset's labels 0..{limit - 1}" if options.num_labels else "integers 0..255"
        raise UserError(f"{path}: mask has values outside {allowed} ({_shown_values(mask[~valid])})")
    return mask.astype(np.uint8)


def resize_label_map(labels: np.ndarray, size: int, label_mode: str) -> np.ndarray:
    """[S, H, W] label values -> [S, size, size]: 0.5 threshold for 0/1 modes, per-class argmax for keep."""
    return resize_labels(labels, size) if label_mode == KEEP else resize_mask(labels, size)


def read_image(source: CaseSource, channels: tuple[int, ...]) -> tuple[np.ndarray, Geometry]:
    """The chosen channels of a case's image, [C, S, H, W] in the files' dtype, and its geometry."""
    if not source.channel_files:
        return read_channels(source.image, channels)
    volumes = [read_volume(source.images[channel]) for channel in channels]
    return np.stack([array for array, _ in volumes]), volumes[0][1]


def _annotation(
    path: Path, options: ConvertOptions, small_mask: np.ndarray | None
) -> tuple[np.ndarray, Any, list[int]]:
    """One noisy annotation: [S, size, size] label values, Dice vs the reference, values it holds.

    The Dice is (mean, {value: dice}) (:func:`~mlbseg.prep.label_noise.foreground_dice`), None without a
    reference; the values are those of the file at original resolution.
    """
    labels = label_map(read_volume(path)[0], options, path)
    noisy = resize_label_map(labels, options.size, options.label_mode)
    values = [int(value) for value in np.unique(labels)]
    if small_mask is None:
        return noisy, None, values
    num_labels = max(int(noisy.max(initial=0)), int(small_mask.max(initial=0)), 1) + 1
    return noisy, foreground_dice(noisy, small_mask, num_labels), values


def convert_case(
    source: CaseSource, annotations: Mapping[str, Path], options: ConvertOptions, target: Path
) -> tuple[dict[str, Any], np.ndarray | None, dict[Path, list[int]]]:
    """Write ``image``, ``noisy_<name>`` and, with a reference, ``mask`` and ``mask_original`` to ``target``.

    Args:
        source: The case's files.
        annotations: ``{name: file}`` of the case's own noisy annotations (``--noisy-labels``).
        options: How every case is converted.
        target: The ``.npz`` to write.

    Returns:
        The case's manifest record (without ``split``, ``source_files`` and the synthetic levels'
        ``noisy_dice``; with ``noisy_dice`` and ``noisy_dice_per_class`` by value of the annotations, where
        there is a reference), its resized mask [S, size, size] uint8 label values (what the noise is
        calibrated on; None without a reference), and the label values each mask file (reference and
        annotations) holds at original resolution ({file: [values]}).
    """
    image, geometry = read_image(source, options.channels)
    slices, windows = channels_to_slices(image, options.size)
    arrays: dict[str, np.ndarray] = {"image": slices}
    small_mask, values = None, {}
    if source.mask is not None:
        mask = label_map(read_volume(source.mask)[0], options, source.mask)
        small_mask = resize_label_map(mask, options.size, options.label_mode)
        arrays.update(mask=small_mask, mask_original=mask)
        values[source.mask] = [int(value) for value in np.unique(mask)]
    record: dict[str, Any] = {
        "id": source.case_id,
        "num_slices": int(image.shape[1]),
        "original_shape": [int(n) for n in image.shape[1:]],
        **geometry,
        "intensity_window": windows,
        "has_reference": source.mask is not None,
    }
    for name, path in annotations.items():
        arrays[f"noisy_{name}"], dice, values[path] = _annotation(path, options, small_mask)
        if dice is not None:
            record.setdefault("noisy_dice", {})[name] = dice[0]
            record.setdefault("noisy_dice_per_class", {})[name] = dice[1]
    save_npz(target, arrays)
    return record, small_mask, values


def add_noisy_masks(
    staged: Path,
    target: Path,
    case_id: str,
    *,
    seed: int,
    strengths: Mapping[str, Any],
    num_labels: int,
    model: str,
) -> tuple[dict[str, float], dict[str, dict[int, float]] | None]:
    """Read a staged train case, add ``noisy_L1..L3`` at the calibrated strengths, write it to ``target``.

    ``strengths``: {level: s} for binary data (K = 2), {level: {class value: s}} for K > 2
    (:mod:`mlbseg.prep.label_noise`), for the noise model named ``model``
    (:mod:`mlbseg.prep.noise_models`). Returns the realised Dice per level ({"L1": …}; for K > 2 the mean
    over foreground classes) and, for K > 2, the Dice per level and class (else None); the staged file is
    removed.
    """
    arrays, chosen = load_npz(staged), noise_model_by_name(model)
    per_class = None
    if num_labels == 2:
        noisy, dice = noisy_levels(arrays["mask"], case_id, seed, strengths, model=chosen)
    else:
        noisy, dice, per_class = noisy_label_levels(arrays["mask"], case_id, seed, strengths, model=chosen)
    arrays.update({f"noisy_{level}": mask for level, mask in noisy.items()})
    save_npz(target, arrays)
    staged.unlink()
    return dice, per_class
