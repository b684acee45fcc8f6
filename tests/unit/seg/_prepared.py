"""A tiny prepared dataset written directly (no raw volumes, no `mlbseg prepare`), and a tiny run model.

The layout is the one of :mod:`mlbseg.prep.manifest` (``manifest.json`` + ``cases/<id>.npz``), written with
its own writers. Every array is known in advance, so tests can compare what the loaders return exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
from torch import nn

from mlbseg.prep.manifest import CASES, FORMAT_VERSION, case_path, save_npz, write_manifest

SIZE = 16  # slice size of the prepared grid (16 = 2**4: fits an smp encoder of depth 3 or 4)
ORIGINAL_HW = (24, 20)  # in-plane size of the original grid (mask_original)
SPACING = (3.0, 0.5, 0.625)  # (z, y, x) mm
SPLITS = {"train": ["Case00", "Case01"], "meta": ["Case02"], "test": ["Case03"]}
LEVELS = {"L1": 1, "L2": 2, "L3": 3}  # noisy level -> column shift of the clean mask
# The smallest model config of a run that these tests use: 0.35 M parameters, 16×16 slices.
MODEL = {"arch": "unet", "encoder": "tu-resnet10t", "encoder_depth": 3, "decoder_channels": (8, 8, 8)}


def small_model(decoder_channels: tuple[int, ...] = MODEL["decoder_channels"]) -> nn.Module:
    """The network that ``mlbseg.seg.model.build_model`` makes for :data:`MODEL` (random init).

    Built with smp directly, as build_model does, so that run checkpoints can be written without depending
    on build_model's signature; ``load_trained_model`` loading these weights strictly checks that they fit.
    """
    return smp.Unet(
        encoder_name=MODEL["encoder"],
        encoder_depth=MODEL["encoder_depth"],
        encoder_weights=None,
        decoder_channels=decoder_channels,
        in_channels=1,
        classes=1,
    )


def num_slices(index: int) -> int:
    """Case ``index`` has 2 + index % 3 slices (2, 3, 4, 2, ...), so cases differ in length."""
    return 2 + index % 3


def _square(shape: tuple[int, int], half: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    row, col = shape[0] // 2, shape[1] // 2
    mask[row - half : row + half, col - half : col + half] = 1
    return mask


def case_arrays(index: int, split: str, size: int = SIZE) -> dict[str, np.ndarray]:
    """The arrays of case ``index``: slice 0 is empty, slice k > 0 holds a centred square.

    ``noisy_L1..L3`` (train cases only) are the mask shifted by 1, 2, 3 columns, so every label key gives
    different pixels.
    """
    slices = num_slices(index)
    mask = np.zeros((slices, size, size), np.uint8)
    original = np.zeros((slices, *ORIGINAL_HW), np.uint8)
    for k in range(1, slices):
        half = 2 + (k + index) % 3
        mask[k] = _square((size, size), half)
        original[k] = _square(ORIGINAL_HW, half + 1)
    noise = np.random.default_rng(index).random((slices, size, size))
    arrays = {
        "image": (0.25 * noise + 0.5 * mask).astype(np.float32)[:, None],
        "mask": mask,
        "mask_original": original,
    }
    if split == "train":
        for level, shift in LEVELS.items():
            arrays[f"noisy_{level}"] = np.roll(mask, shift, axis=2)
    return arrays


def write_prepared(
    folder: Path, splits: dict[str, list[str]] | None = None, size: int = SIZE
) -> dict[str, dict[str, np.ndarray]]:
    """Write a prepared dataset to ``folder``; returns the arrays written, by case id.

    Case ``CaseNN`` gets :func:`case_arrays` ``(NN, its split)``. The split lists are written in the order
    given (the loaders must follow the manifest's order).
    """
    splits = SPLITS if splits is None else splits
    (folder / CASES).mkdir(parents=True, exist_ok=True)
    written, records = {}, {}
    for split, ids in splits.items():
        for case_id in ids:
            arrays = case_arrays(int(case_id[4:]), split, size)
            save_npz(case_path(folder, case_id), arrays)
            written[case_id] = arrays
            records[case_id] = {
                "id": case_id,
                "split": split,
                "num_slices": int(arrays["image"].shape[0]),
                "original_shape": [int(n) for n in arrays["mask_original"].shape],
                "spacing": list(SPACING),
            }
    manifest = {
        "format_version": FORMAT_VERSION,
        "seed": 0,
        "slice_size": size,
        "labels": {"background": 0, "foreground": 1},
        "channels": [0],
        "split": {name: list(ids) for name, ids in splits.items()},
        "cases": records,
    }
    write_manifest(folder, manifest)
    return written
