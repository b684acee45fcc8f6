"""The prepared dataset as tensors on the training device (docs/design.md §2, §4).

PROMISE12 at 144² is about 100 MB, so every slice of the train and meta cases is loaded once and kept on
the device (the GPU when there is one); batches are index lookups, with no loader workers or host copies.
Masks are stored as uint8 and turned into float 0/1 only for the batch at hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlbseg.errors import UserError
from mlbseg.prep.manifest import load_case, load_manifest

# The manifest entries a trained model needs to segment new volumes, stored in its checkpoints (``data``).
DATA_RECORD_KEYS = ("slice_size", "normalization", "channels", "labels", "label_mode")


def data_record(manifest: dict) -> dict:
    """What a checkpoint keeps of the prepared manifest so that ``predict`` needs no prepared folder.

    Example:
        >>> manifest = {"slice_size": 144, "normalization": "n", "channels": [0], "seed": 3,
        ...             "labels": {"background": 0, "foreground": 1}, "label_mode": "binary"}
        >>> sorted(data_record(manifest))
        ['channels', 'label_mode', 'labels', 'normalization', 'slice_size']
    """
    return {key: manifest[key] for key in DATA_RECORD_KEYS if key in manifest}


@dataclass(frozen=True)
class SliceSet:
    """All slices of some cases, stacked.

    Attributes:
        images: [N, C, h, w] float32, intensity-normalised (C: the prepared image channels).
        labels: [N, 1, h, w] uint8 0/1, the labels trained on (a noisy level, or the reference).
        reference: [N, 1, h, w] uint8 0/1, the clean reference (for monitoring only).
    """

    images: torch.Tensor
    labels: torch.Tensor
    reference: torch.Tensor

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images [B, 1, h, w] float32 and labels/reference [B, 1, h, w] float32 0/1 at ``index``."""
        return self.images[index], self.labels[index].float(), self.reference[index].float()


@dataclass(frozen=True)
class Volume:
    """One case for evaluation: its slices at the model's size and its reference at original size.

    Attributes:
        case_id: e.g. ``Case05``.
        images: [S, C, h, w] float32 tensor on the device.
        mask_original: [S, H, W] uint8 numpy array, the untouched reference.
        spacing: (z, y, x) voxel spacing in mm.
    """

    case_id: str
    images: torch.Tensor
    mask_original: np.ndarray
    spacing: tuple[float, float, float]


def split_cases(prepared: Path, split: str) -> list[str]:
    """Case ids of ``split`` (train, meta or test) in the prepared folder's manifest."""
    manifest = load_manifest(prepared)
    cases = list(manifest["split"].get(split, []))
    if not cases:
        raise UserError(f"{prepared / 'manifest.json'}: the '{split}' split is empty or missing")
    return cases


def load_slices(prepared: Path, split: str, label_key: str, device: torch.device) -> SliceSet:
    """Every slice of the cases in ``split``, training on ``label_key`` (``mask`` or ``noisy_L1``…)."""
    images, labels, reference = [], [], []
    for case_id in split_cases(prepared, split):
        arrays = load_case(prepared, case_id)
        if label_key not in arrays:
            raise UserError(
                f"{prepared / 'cases' / (case_id + '.npz')}: no '{label_key}' array; "
                "noisy levels exist for train cases of a dataset written by `mlbseg prepare`"
            )
        images.append(arrays["image"])
        labels.append(arrays[label_key])
        reference.append(arrays["mask"])

    def stack(parts: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts)).to(device=device, dtype=dtype)

    masks = [stack(parts, torch.uint8).unsqueeze(1) for parts in (labels, reference)]
    return SliceSet(stack(images, torch.float32), *masks)


def load_volumes(prepared: Path, split: str, device: torch.device) -> list[Volume]:
    """The cases of ``split`` as :class:`Volume` objects, in manifest order."""
    manifest = load_manifest(prepared)
    volumes = []
    for case_id in split_cases(prepared, split):
        arrays = load_case(prepared, case_id)
        spacing = tuple(float(s) for s in manifest["cases"][case_id]["spacing"])
        images = torch.from_numpy(arrays["image"]).to(device)
        volumes.append(Volume(case_id, images, arrays["mask_original"], spacing))  # type: ignore[arg-type]
    return volumes
