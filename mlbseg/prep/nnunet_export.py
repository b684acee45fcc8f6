"""Write a prepared dataset as an nnU-Net v2 raw dataset, to train nnU-Net on exactly the same noisy labels.

nnU-Net (Isensee et al., Nature Methods 2021) is the strong supervised baseline of the field; trained on the
noisy labels MLB-Seg sees, it answers "what does meta-learning add?". The export writes, at the prepared
slice grid (the noisy labels exist only there)::

    OUT/dataset.json                      channel_names, labels, numTraining, file_ending (nnU-Net's
                                          required fields) plus name, description, reference
    OUT/imagesTr/<case>_<XXXX>.nii.gz     train and meta cases, one file per channel
    OUT/labelsTr/<case>.nii.gz            train cases: the chosen noisy labels; meta cases: their clean
                                          reference (MLB-Seg trains on the meta set too, so it is training
                                          data here, clean)
    OUT/imagesTs/<case>_<XXXX>.nii.gz     test cases' images, no labels

Train cases lacking the chosen labels (an annotation that only some cases have, or ``clean`` for a case
without a reference) are left out and counted, and so are val cases (held out from training for every
method; nnU-Net validates on its own folds). Geometry: the in-plane spacing is scaled by original / size,
and the origin moved to the centre of the first resized pixel (the resize is pixel-centre aligned,
:mod:`mlbseg.prep.resize`), so every voxel keeps its physical position and the physical extent is kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mlbseg.engine.atomic import atomic_folder
from mlbseg.errors import UserError
from mlbseg.prep.manifest import load_case, load_manifest
from mlbseg.prep.noise import LEVELS
from mlbseg.prep.volumes import Geometry, write_volume

CLEAN = "clean"
NIFTI = ".nii.gz"


def resized_geometry(case: dict[str, Any], size: int) -> Geometry:
    """The geometry of a case's prepared [S, size, size] grid (module docstring), from its manifest record."""
    _, height, width = case["original_shape"]
    spacing_z, spacing_y, spacing_x = case["spacing"]
    scale_y, scale_x = height / size, width / size
    direction = np.asarray(case["direction"], dtype=np.float64).reshape(3, 3)
    # first output pixel centre, in input pixels from the first input centre: (scale - 1) / 2, per axis (x, y)
    offset = np.array([(scale_x - 1) / 2 * spacing_x, (scale_y - 1) / 2 * spacing_y, 0.0])
    return {
        "spacing": [float(spacing_z), float(spacing_y * scale_y), float(spacing_x * scale_x)],
        "origin": [float(value) for value in np.asarray(case["origin"]) + direction @ offset],
        "direction": [float(value) for value in case["direction"]],
    }


def _label_key(manifest: dict[str, Any], noise: str) -> str:
    """The npz key of the chosen training labels; UserError listing the choices."""
    choices = [*LEVELS, CLEAN, *manifest.get("annotations", {})]
    if noise not in choices:
        raise UserError(f"--noise {noise}: choose one of {', '.join(choices)}")
    return "mask" if noise == CLEAN else f"noisy_{noise}"


def _write_images(folder: Path, case_id: str, image: np.ndarray, geometry: Geometry) -> None:
    """One NIfTI per channel of a [S, C, size, size] image: ``<case>_<XXXX>.nii.gz``."""
    for channel in range(image.shape[1]):
        write_volume(
            folder / f"{case_id}_{channel:04d}{NIFTI}", np.ascontiguousarray(image[:, channel]), geometry
        )


def _dataset_json(manifest: dict[str, Any], noise: str, num_training: int) -> dict[str, Any]:
    names = manifest.get("channel_names") or [str(channel) for channel in manifest["channels"]]
    return {
        "channel_names": {str(index): name for index, name in enumerate(names)},
        "labels": dict(manifest["labels"]),
        "numTraining": num_training,
        "file_ending": NIFTI,
        "name": Path(manifest["source"]).name,
        "description": (
            f"mlbseg prepared dataset at {manifest['slice_size']}²; train cases with the '{noise}' labels, "
            "meta cases with their clean reference"
        ),
        "reference": manifest.get("annotations", {}).get(noise, {}).get("source", f"mlbseg noise {noise}"),
    }


def export_nnunet(
    prepared: str | Path, out: str | Path, *, noise: str, overwrite: bool = False
) -> dict[str, int]:
    """Write ``prepared`` as an nnU-Net v2 raw dataset in the new folder ``out``.

    Args:
        prepared: A folder written by ``mlbseg prepare``.
        out: Output folder; must not exist unless ``overwrite``.
        noise: The train cases' labels: ``L1``, ``L2``, ``L3``, ``clean`` or a given annotation's name.
        overwrite: Replace an existing ``out``.

    Returns:
        Case counts: ``train`` and ``meta`` (in labelsTr), ``test`` (imagesTs), ``left_out`` (train
        cases without the chosen labels), ``val`` (val cases, not exported).
    """
    manifest = load_manifest(prepared)
    key = _label_key(manifest, noise)
    size = int(manifest["slice_size"])
    counts = {"train": 0, "meta": 0, "test": 0, "left_out": 0, "val": 0}
    with atomic_folder(out, overwrite) as folder:
        for sub in ("imagesTr", "labelsTr", "imagesTs"):
            (folder / sub).mkdir()
        for case_id, case in sorted(manifest["cases"].items()):
            split = case["split"]
            if split == "val":
                counts["val"] += 1
                continue
            arrays = load_case(prepared, case_id)
            geometry = resized_geometry(case, size)
            if split == "test":
                _write_images(folder / "imagesTs", case_id, arrays["image"], geometry)
            else:
                labels = arrays.get(key if split == "train" else "mask")
                if labels is None:
                    counts["left_out"] += 1
                    continue
                _write_images(folder / "imagesTr", case_id, arrays["image"], geometry)
                write_volume(folder / "labelsTr" / f"{case_id}{NIFTI}", labels, geometry)
            counts[split] += 1
        spec = _dataset_json(manifest, noise, counts["train"] + counts["meta"])
        (folder / "dataset.json").write_text(json.dumps(spec, indent=1, ensure_ascii=False) + "\n")
    return counts
