"""Exchange data with the published L2B / MLB-Seg code's ``.npy`` layout (docs/reference.md §6.1, §6.2).

That code stores pickled dicts with ``np.save``: whole volumes ``{img, label}`` (S×H×W) and one file per
training slice ``{img, label, noisy_label}`` (meta slices ``{img, label}``), plus a MATLAB split file with
the keys ``train_l2b``, ``meta_l2b`` and ``test``. Folder names follow MLB-Seg's README:

    OUT/original_data/<id>.npy      {img: float32 [S, size, size] in [0, 1], label: uint8 [S, size, size]}
    OUT/train/<id>_<i>.npy          {img, label, noisy_label}: [size, size] slices of the train cases
    OUT/meta_train/<id>_<i>.npy     {img, label}: slices of the meta cases (their own folder, unlike the
                                    reference script, docs/reference.md §7 item 34)
    OUT/split_info.mat              train_l2b, meta_l2b, test: case ids

Only single-channel binary datasets can be exported (that code knows nothing else). Importing reads such
``{img, label}`` volumes back into NIfTI pairs that ``mlbseg prepare`` reads. The
legacy files carry no geometry, so the volumes get 1 mm spacing, zero origin and identity direction.
They are read with a restricted unpickler (:mod:`mlbseg.safe_pickle`) that builds dicts and numpy arrays
only, so a hostile file cannot run code.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mlbseg.engine.atomic import atomic_folder
from mlbseg.errors import UserError
from mlbseg.prep.discovery import MASK_TAG
from mlbseg.prep.manifest import load_case, load_manifest
from mlbseg.prep.noise import LEVELS
from mlbseg.prep.volumes import write_volume
from mlbseg.safe_pickle import load_npy_object

UNIT_GEOMETRY = {
    "spacing": [1.0, 1.0, 1.0],
    "origin": [0.0, 0.0, 0.0],
    "direction": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0],
}


def _save_slices(folder: Path, case_id: str, arrays: dict[str, np.ndarray]) -> int:
    """One ``{key: [H, W] slice}`` dict per slice, ``<id>_<i>.npy``; returns the slice count."""
    count = next(iter(arrays.values())).shape[0]
    for index in range(count):
        np.save(folder / f"{case_id}_{index}.npy", {key: array[index] for key, array in arrays.items()})
    return count


def export_legacy(
    prepared: str | Path, out: str | Path, level: str = "L2", overwrite: bool = False
) -> dict[str, int]:
    """Write a prepared dataset in the reference layout with noise ``level``; file counts per folder."""
    from scipy.io import savemat

    if level not in LEVELS:
        raise UserError(f"--level {level}: choose one of {', '.join(LEVELS)}")
    manifest = load_manifest(prepared)
    if len(manifest["channels"]) != 1 or len(manifest["labels"]) != 2:
        raise UserError(
            f"{Path(prepared) / 'manifest.json'}: the reference layout holds one channel and binary masks; "
            f"this dataset has {len(manifest['channels'])} channel(s) and {len(manifest['labels'])} labels "
            "(prepare it again with --channels N --binary)"
        )
    counts = {"original_data": 0, "train": 0, "meta_train": 0}
    with atomic_folder(out, overwrite) as folder:
        for name in counts:
            (folder / name).mkdir()
        for case_id, case in manifest["cases"].items():
            arrays = load_case(prepared, case_id)
            np.save(
                folder / "original_data" / f"{case_id}.npy",
                {"img": arrays["image"][:, 0], "label": arrays["mask"]},
            )
            counts["original_data"] += 1
            if case["split"] == "train":
                slices = {
                    "img": arrays["image"][:, 0],
                    "label": arrays["mask"],
                    "noisy_label": arrays[f"noisy_{level}"],
                }
                counts["train"] += _save_slices(folder / "train", case_id, slices)
            elif case["split"] == "meta":
                slices = {"img": arrays["image"][:, 0], "label": arrays["mask"]}
                counts["meta_train"] += _save_slices(folder / "meta_train", case_id, slices)
        split = manifest["split"]
        savemat(
            folder / "split_info.mat",
            {
                "train_l2b": np.array(split["train"]),
                "meta_l2b": np.array(split["meta"]),
                "test": np.array(split["test"]),
            },
        )
    return counts


def _read_legacy_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    item = load_npy_object(path, "saved dict of the reference's volume files")
    if not isinstance(item, dict) or not {"img", "label"} <= set(item):
        raise UserError(
            f"{path}: expected a saved dict with keys 'img' and 'label' (the reference's volume files)"
        )
    image, label = np.asarray(item["img"]), np.asarray(item["label"])
    if image.ndim != 3 or image.shape != label.shape:
        raise UserError(
            f"{path}: expected img and label of one shape [S, H, W]; got {image.shape} and {label.shape}"
        )
    return image, label


def import_legacy(volumes: str | Path, raw: str | Path, overwrite: bool = False) -> list[str]:
    """Turn reference ``{img, label}`` volumes into ``<id>.nii.gz`` + ``<id>_segmentation.nii.gz`` pairs."""
    volumes = Path(volumes)
    files = sorted(p for p in volumes.glob("*.npy") if p.name[0] not in "._") if volumes.is_dir() else []
    if not files:
        raise UserError(
            f"{volumes}: no <id>.npy volume files found (expected the reference's original_data/)"
        )
    with atomic_folder(raw, overwrite) as folder:
        for path in files:
            image, label = _read_legacy_volume(path)
            write_volume(folder / f"{path.stem}.nii.gz", image.astype(np.float32), UNIT_GEOMETRY)
            write_volume(
                folder / f"{path.stem}{MASK_TAG}.nii.gz", (label > 0).astype(np.uint8), UNIT_GEOMETRY
            )
    return [path.stem for path in files]
