"""A tiny prepared dataset written directly (no raw volumes, no `mlbseg prepare`), and a tiny run model.

The layout is the one of :mod:`mlbseg.prep.manifest` (``manifest.json`` + ``cases/<id>.npz``), written with
its own writers. Every array is known in advance, so tests can compare what the loaders return exactly.

The default is binary, one channel, every case with a reference. Keyword options of :func:`write_prepared`
make the other kinds of data: ``num_labels`` K > 2 (the square gets an inner square of the top label),
``channels`` C > 1 (each further channel another noise draw on the same structures), ``annotations``
(given noisy labels ``noisy_<name>`` for some cases), ``without_reference`` (train cases with no
``mask``/``mask_original``, ``has_reference: false``, only their annotations) and ``val`` (a validation
split: cases with a clean reference and no noisy labels, e.g. :data:`VAL`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
from torch import nn

from mlbseg.prep.manifest import CASES, FORMAT_VERSION, case_path, save_npz, write_manifest

SIZE = 16  # slice size of the prepared grid (16 = 2**4: fits an smp encoder of depth 3 or 4)
ORIGINAL_HW = (24, 20)  # in-plane size of the original grid (mask_original)
SPACING = (3.0, 0.5, 0.625)  # (z, y, x) mm
SPLITS = {"train": ["Case00", "Case01"], "meta": ["Case02"], "test": ["Case03"]}
VAL = ["Case05", "Case06"]  # write_prepared(folder, val=VAL): a val split of two cases (4 and 2 slices)
LEVELS = {"L1": 1, "L2": 2, "L3": 3}  # noisy level -> column shift of the clean mask
ANNOTATION_SHIFT = -1  # a given annotation is the clean mask shifted one column to the left
# A K = 3, C = 2 dataset: write_prepared(folder, ZONES_SPLITS, **ZONES). Case04 (train) has no reference,
# only a 'rater2' annotation; Case01 has both; Case00 only the reference and the noisy levels.
ZONES_SPLITS = {"train": ["Case00", "Case01", "Case04"], "meta": ["Case02"], "test": ["Case03"]}
ZONES = {
    "num_labels": 3,
    "channels": 2,
    "annotations": {"rater2": ["Case01", "Case04"]},
    "without_reference": ["Case04"],
}
# The smallest model config of a run that these tests use: 0.35 M parameters, 16×16 slices.
MODEL = {"arch": "unet", "encoder": "tu-resnet10t", "encoder_depth": 3, "decoder_channels": (8, 8, 8)}


def small_model(
    decoder_channels: tuple[int, ...] = MODEL["decoder_channels"], *, in_channels: int = 1, classes: int = 1
) -> nn.Module:
    """The network that ``mlbseg.seg.model.build_model`` makes for :data:`MODEL` (random init).

    Built with smp directly, as build_model does, so that run checkpoints can be written without depending
    on build_model's signature; ``load_trained_model`` loading these weights strictly checks that they fit.
    """
    return smp.Unet(
        encoder_name=MODEL["encoder"],
        encoder_depth=MODEL["encoder_depth"],
        encoder_weights=None,
        decoder_channels=decoder_channels,
        in_channels=in_channels,
        classes=classes,
    )


def num_slices(index: int) -> int:
    """Case ``index`` has 2 + index % 3 slices (2, 3, 4, 2, ...), so cases differ in length."""
    return 2 + index % 3


def _square(shape: tuple[int, int], half: int) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    row, col = shape[0] // 2, shape[1] // 2
    mask[row - half : row + half, col - half : col + half] = 1
    return mask


def _structures(shape: tuple[int, int], half: int, num_labels: int) -> np.ndarray:
    """A centred square of label 1; for K > 2 its inner square (half − 1) holds label K − 1."""
    mask = _square(shape, half)
    if num_labels > 2:
        mask[_square(shape, half - 1) == 1] = num_labels - 1
    return mask


def case_arrays(
    index: int,
    split: str,
    size: int = SIZE,
    *,
    num_labels: int = 2,
    channels: int = 1,
    annotations: Sequence[str] = (),
    with_reference: bool = True,
) -> dict[str, np.ndarray]:
    """The arrays of case ``index``: slice 0 is empty, slice k > 0 holds a centred square.

    ``noisy_L1..L3`` (train cases with a reference) are the mask shifted by 1, 2, 3 columns, so every label
    key gives different pixels; each name in ``annotations`` gets ``noisy_<name>``, the mask shifted by
    :data:`ANNOTATION_SHIFT`. Channel c > 0 of the image is the structures on noise of seed (index, c).
    Without a reference the case has no ``mask``, ``mask_original`` and noisy levels.
    """
    slices = num_slices(index)
    mask = np.zeros((slices, size, size), np.uint8)
    original = np.zeros((slices, *ORIGINAL_HW), np.uint8)
    for k in range(1, slices):
        half = 2 + (k + index) % 3
        mask[k] = _structures((size, size), half, num_labels)
        original[k] = _structures(ORIGINAL_HW, half + 1, num_labels)
    noise = np.random.default_rng(index).random((slices, size, size))
    image = (0.25 * noise + 0.5 * mask).astype(np.float32)[:, None]
    if num_labels > 2:
        image = (0.25 * noise + 0.5 * mask / (num_labels - 1)).astype(np.float32)[:, None]
    extra = [np.random.default_rng((index, c)).random((slices, size, size)) for c in range(1, channels)]
    extra_channels = [(0.25 * n + 0.5 * (mask > 0)).astype(np.float32)[:, None] for n in extra]
    arrays = {"image": np.concatenate([image, *extra_channels], axis=1)}
    if with_reference:
        arrays.update(mask=mask, mask_original=original)
    if split == "train" and with_reference:
        for level, shift in LEVELS.items():
            arrays[f"noisy_{level}"] = np.roll(mask, shift, axis=2)
    for name in annotations:
        arrays[f"noisy_{name}"] = np.roll(mask, ANNOTATION_SHIFT, axis=2)
    return arrays


def label_table(num_labels: int) -> dict[str, int]:
    """The manifest's ``labels``: binary {background, foreground}, else background and zone1..zone(K−1)."""
    if num_labels == 2:
        return {"background": 0, "foreground": 1}
    return {"background": 0, **{f"zone{value}": value for value in range(1, num_labels)}}


def write_prepared(
    folder: Path,
    splits: dict[str, list[str]] | None = None,
    size: int = SIZE,
    *,
    num_labels: int = 2,
    channels: int = 1,
    annotations: Mapping[str, Sequence[str]] | None = None,
    without_reference: Sequence[str] = (),
    val: Sequence[str] = (),
) -> dict[str, dict[str, np.ndarray]]:
    """Write a prepared dataset to ``folder``; returns the arrays written, by case id.

    Case ``CaseNN`` gets :func:`case_arrays` ``(NN, its split)``. The split lists are written in the order
    given (the loaders must follow the manifest's order). ``annotations`` maps an annotation name to the
    ids of the cases that have it (listed in the manifest's ``annotations``); the cases in
    ``without_reference`` (train cases) have none. ``val`` adds a ``val`` split of those cases (after the
    others). The defaults write the binary one-channel dataset.
    """
    splits = SPLITS if splits is None else splits
    if val:
        splits = {**splits, "val": list(val)}
    annotations = annotations or {}
    (folder / CASES).mkdir(parents=True, exist_ok=True)
    written, records = {}, {}
    for split, ids in splits.items():
        for case_id in ids:
            with_reference = case_id not in without_reference
            arrays = case_arrays(
                int(case_id[4:]),
                split,
                size,
                num_labels=num_labels,
                channels=channels,
                annotations=[name for name, cases in annotations.items() if case_id in cases],
                with_reference=with_reference,
            )
            save_npz(case_path(folder, case_id), arrays)
            written[case_id] = arrays
            records[case_id] = {
                "id": case_id,
                "split": split,
                "num_slices": int(arrays["image"].shape[0]),
                "original_shape": [int(num_slices(int(case_id[4:]))), *ORIGINAL_HW],
                "spacing": list(SPACING),
            }
            if not with_reference:
                records[case_id]["has_reference"] = False
    manifest = {
        "format_version": FORMAT_VERSION,
        "seed": 0,
        "slice_size": size,
        "labels": label_table(num_labels),
        "channels": list(range(channels)),
        "split": {name: list(ids) for name, ids in splits.items()},
        "cases": records,
    }
    if annotations:
        manifest["annotations"] = {name: {"cases": sorted(cases)} for name, cases in annotations.items()}
    write_manifest(folder, manifest)
    return written
