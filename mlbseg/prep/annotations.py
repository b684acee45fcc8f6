"""The user's own noisy annotations (``mlbseg prepare --noisy-labels DIR``): find, name and check them.

Each DIR holds one mask per case that has such an annotation (a second rater, a weak annotator, a model's
masks), named like that case's reference mask in RAW (``Case03_segmentation.mhd``; ``case_003.nii.gz``
in nnU-Net layout; any volume extension may stand for the reference's). The annotation is named after its
folder (``rater2/`` -> ``rater2``) and stored as ``noisy_<name>`` in the case's npz, so a name must be a
valid npz key and config value: letters, digits, ``_`` and ``-``, and none of the reserved ``L1``,
``L2``, ``L3``, ``clean`` (the synthetic levels and the clean-label upper bound of ``data.noise``).

Everything here runs before any output exists, each problem one :class:`~mlbseg.errors.UserError` line
naming the folder or file: a folder that does not exist or matches no case, a file of no case, two
annotations of one name, a mask on another grid than its image (:func:`check_annotation_grids`). Values
outside the dataset's labels are refused when the mask is converted (:func:`mlbseg.prep.convert.label_map`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mlbseg.errors import UserError
from mlbseg.prep.discovery import CaseSource, check_grid, volume_files
from mlbseg.prep.volumes import volume_suffix

RESERVED_NAMES = ("L1", "L2", "L3", "clean")
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True)
class Annotation:
    """One ``--noisy-labels`` folder: its name, absolute path and mask file per case id."""

    name: str
    folder: Path
    files: dict[str, Path]


def _stem(name: str) -> str:
    suffix = volume_suffix(Path(name)) or ""
    return name[: len(name) - len(suffix)]


def _check_name(folder: Path, name: str, seen: dict[str, Path]) -> None:
    if not _NAME.match(name):
        raise UserError(
            f"{folder}: annotation name '{name}' (the folder's name) may hold only letters, digits, _ and -"
        )
    if name in RESERVED_NAMES:
        raise UserError(
            f"{folder}: annotation name '{name}' is reserved ({', '.join(RESERVED_NAMES)}); rename the folder"
        )
    if name in seen:
        raise UserError(
            f"{folder}: a second annotation named '{name}' (also {seen[name]}); rename one folder"
        )


def find_annotations(folders: Sequence[str | Path], sources: Sequence[CaseSource]) -> list[Annotation]:
    """Match every file of every folder to the case whose reference it is named like.

    Raises:
        UserError: (one line naming the folder or file) no such folder, a bad, reserved or repeated name,
            a file that is no case's, a folder that matches no case.
    """
    by_stem = {_stem(source.mask_name): source.case_id for source in sources}
    example = sources[0].mask_name
    annotations: list[Annotation] = []
    seen: dict[str, Path] = {}
    for given in folders:
        folder = Path(given).absolute()
        if not folder.is_dir():
            raise UserError(f"--noisy-labels {given}: no such folder")
        _check_name(folder, folder.name, seen)
        seen[folder.name] = folder
        files: dict[str, Path] = {}
        for path in volume_files(folder):
            case_id = by_stem.get(_stem(path.name))
            if case_id is None:
                raise UserError(
                    f"{path}: no case of the raw folder has a reference named like it "
                    f"(expected names like {example})"
                )
            if case_id in files:
                raise UserError(
                    f"{path}: a second noisy mask of case {case_id} (also {files[case_id].name}); keep one"
                )
            files[case_id] = path
        if not files:
            raise UserError(
                f"{folder}: matches no case (expected masks named like the references, e.g. {example})"
            )
        annotations.append(Annotation(folder.name, folder, dict(sorted(files.items()))))
    return annotations


def check_annotation_grids(annotations: Sequence[Annotation], sources: dict[str, CaseSource]) -> None:
    """Every noisy mask must lie on its image's voxel grid (shape, spacing, origin, direction; headers)."""
    for annotation in annotations:
        for case_id, path in annotation.files.items():
            check_grid(path, sources[case_id].image, "noisy mask")
