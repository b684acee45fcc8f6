"""The prepared dataset as tensors on the training device (docs/design.md §2, §4).

PROMISE12 at 144² is about 100 MB, so every slice of the train and meta cases is loaded once and kept on
the device (the GPU when there is one); batches are index lookups, with no loader workers or host copies.
Masks are stored as uint8 class indices and turned into float only for the batch at hand.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mlbseg.errors import UserError
from mlbseg.prep.manifest import MANIFEST, case_path, load_case, load_manifest
from mlbseg.seg.config import NOISE_LEVELS

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
        labels: [N, 1, h, w] uint8 class indices 0..K−1, the labels trained on (a noisy level, a given
            annotation, or the reference).
        reference: [N, 1, h, w] uint8 class indices, the clean reference (for monitoring only; zeros for
            slices of a case without one).
        has_reference: [N] bool, the slices whose case has a reference.
        num_labels: K, the dataset's labels with the background (2 for binary data).
        cases: The ids of the cases loaded, in slice order.
        case_slices: The number of slices of each of ``cases``.
        left_out: The ids of the split's cases left out for lacking the labels (``skip_missing``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    reference: torch.Tensor
    has_reference: torch.Tensor
    num_labels: int
    cases: tuple[str, ...]
    case_slices: tuple[int, ...]
    left_out: tuple[str, ...] = ()

    def slice_names(self) -> list[str]:
        """``<case> z=<k>`` for every slice, in order."""
        pairs = zip(self.cases, self.case_slices, strict=True)
        return [f"{case} z={k}" for case, count in pairs for k in range(count)]

    def cases_without_reference(self) -> list[str]:
        """The ids of the loaded cases that have no reference."""
        starts = np.cumsum([0, *self.case_slices[:-1]]).tolist()  # each case's first slice
        flags = self.has_reference.cpu()
        return [case for case, start in zip(self.cases, starts, strict=True) if not flags[start]]

    def __len__(self) -> int:
        return self.images.shape[0]

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images [B, C, h, w] float32 and labels/reference [B, 1, h, w] float32 class indices."""
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


def training_label_key(noise: str) -> str:
    """The case-file array that ``data.noise`` trains on: ``mask`` for ``clean``, else ``noisy_<noise>``."""
    return "mask" if noise == "clean" else f"noisy_{noise}"


def available_labels(manifest: dict) -> list[str]:
    """The ``data.noise`` values a prepared dataset offers: ``clean``, L1–L3 and its given annotations."""
    return [*NOISE_LEVELS, *manifest.get("annotations", {})]


def load_training_slices(prepared: Path, noise: str, device: torch.device) -> SliceSet:
    """The train slices labelled by ``data.noise``; train cases without those labels are left out.

    Raises:
        UserError: ``noise`` is not a label of the dataset (the message lists them), or no train case has it.
    """
    manifest = load_manifest(prepared)
    choices = available_labels(manifest)
    if noise not in choices:
        raise UserError(
            f"{prepared / MANIFEST}: 'data.noise' must be one of {', '.join(choices)} (the labels of this "
            f"dataset); got {noise!r}"
        )
    return load_slices(prepared, "train", training_label_key(noise), device, skip_missing=True)


def load_slices(
    prepared: Path, split: str, label_key: str, device: torch.device, *, skip_missing: bool = False
) -> SliceSet:
    """Every slice of the cases in ``split``, training on ``label_key`` (``mask``, ``noisy_L1``, ...).

    Cases whose manifest record says ``has_reference: false`` get a zero reference and ``has_reference``
    False. With ``skip_missing`` a case without ``label_key`` is left out (listed in ``left_out``).

    Raises:
        UserError: A case lacks ``label_key`` (without ``skip_missing``) or its reference, a label value
            outside the manifest's labels, images with another channel count than the manifest's
            ``channels``, or no case left.
    """
    manifest = load_manifest(prepared)
    num_labels, channels = _num_labels(manifest, prepared), len(manifest.get("channels", [0]))
    images, labels, reference, has_reference, cases, left_out = [], [], [], [], [], []
    for case_id in split_cases(prepared, split):
        arrays, path = load_case(prepared, case_id), case_path(prepared, case_id)
        if label_key not in arrays and skip_missing:
            left_out.append(case_id)
            continue
        with_reference = bool(manifest["cases"].get(case_id, {}).get("has_reference", True))
        label, clean = _checked_labels(
            path, arrays, label_key, with_reference=with_reference, num_labels=num_labels, split=split
        )
        if arrays["image"].ndim != 4 or arrays["image"].shape[1] != channels:
            raise UserError(
                f"{path}: 'image' {list(arrays['image'].shape)} is not [S, {channels}, h, w] (the manifest "
                f"lists {channels} channel(s)); run `mlbseg prepare` again"
            )
        images.append(arrays["image"])
        labels.append(label)
        reference.append(clean)
        has_reference.append(np.full(len(label), with_reference))
        cases.append(case_id)
    if not cases:
        raise UserError(f"{prepared / MANIFEST}: no {split} case has a '{label_key}' array")

    def stack(parts: list[np.ndarray], dtype: torch.dtype) -> torch.Tensor:
        return torch.from_numpy(np.concatenate(parts)).to(device=device, dtype=dtype)

    masks = [stack(parts, torch.uint8).unsqueeze(1) for parts in (labels, reference)]
    return SliceSet(
        stack(images, torch.float32),
        *masks,
        has_reference=stack(has_reference, torch.bool),
        num_labels=num_labels,
        cases=tuple(cases),
        case_slices=tuple(len(label) for label in labels),
        left_out=tuple(left_out),
    )


def _checked_labels(
    path: Path, arrays: dict, label_key: str, *, with_reference: bool, num_labels: int, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """A case's training labels and reference [S, h, w] (zeros without one), their values checked."""
    if label_key not in arrays:
        raise UserError(f"{path}: no '{label_key}' array; every {split} case needs it")
    if with_reference and "mask" not in arrays:
        raise UserError(f"{path}: no 'mask' array, but the manifest gives this case a reference")
    label = arrays[label_key]
    clean = arrays["mask"] if with_reference else np.zeros_like(label)
    for key, values in ((label_key, label), ("mask", clean)):
        if values.size and int(values.max()) >= num_labels:
            raise UserError(
                f"{path}: '{key}' holds label value {int(values.max())}, but the manifest lists "
                f"{num_labels} labels (0..{num_labels - 1})"
            )
    return label, clean


def _num_labels(manifest: dict, prepared: Path) -> int:
    """K from the manifest's ``labels`` (background included); UserError for fewer than two."""
    labels = manifest.get("labels")
    if not isinstance(labels, dict) or len(labels) < 2:
        raise UserError(
            f"{prepared / MANIFEST}: 'labels' must map the background and at least one class to values "
            "0..K-1; run `mlbseg prepare` again"
        )
    return len(labels)


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
