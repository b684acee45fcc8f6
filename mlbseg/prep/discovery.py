"""Find the (image, mask) pairs of a raw dataset folder (docs/design.md §2.1).

Two layouts are recognised:

- **pairs** (PROMISE12 and NIfTI): ``ID.mhd`` (+ ``ID.raw``) or ``ID.nii[.gz]`` next to
  ``ID_segmentation.<same kinds>``, all directly in the folder;
- **msd** (Medical Segmentation Decathlon Task05): ``imagesTr/ID.nii.gz`` (4-D T2+ADC) with
  ``labelsTr/ID.nii.gz`` (0 background, 1 PZ, 2 TZ).

Names starting with ``.`` or ``_`` (macOS ``._*`` forks, ``.DS_Store``) and files that are not volumes
(``.raw`` data files, notes, ``dataset.json``) are ignored. Cases come back sorted by id, whatever the
order of the directory listing. :func:`check_pairs` then compares each image's grid with its mask's from
the headers alone, before anything is converted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mlbseg.errors import UserError
from mlbseg.prep.volumes import geometry_difference, read_header, volume_suffix

MASK_TAG = "_segmentation"
PAIRS, MSD = "pairs", "msd"
_AXES = {"spacing": "spacing (z, y, x)", "origin": "origin (x, y, z)", "direction": "direction"}


@dataclass(frozen=True)
class CaseSource:
    """Where one case's image and reference mask live."""

    case_id: str
    image: Path
    mask: Path


def _volumes(folder: Path) -> list[Path]:
    """Volume files directly in ``folder``, skipping hidden and ``_``-prefixed names."""
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file() and path.name[0] not in "._" and volume_suffix(path) is not None
    )


def _stem(path: Path) -> str:
    suffix = volume_suffix(path) or ""
    return path.name[: len(path.name) - len(suffix)]


def _by_id(paths: list[Path], what: str, tag: str = "") -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in paths:
        key = _stem(path).removesuffix(tag)
        if key in found:
            raise UserError(f"{path}: a second {what} for case '{key}' (also {found[key].name}); keep one")
        found[key] = path
    return found


def _match(
    images: dict[str, Path], masks: dict[str, Path], image_hint: str, mask_hint: str
) -> list[CaseSource]:
    """Pair images with masks by id; ``*_hint`` name the missing partner (fields: id, name, suffix)."""
    for case_id, mask in sorted(masks.items()):
        if case_id not in images:
            hint = image_hint.format(id=case_id, name=mask.name, suffix=volume_suffix(mask))
            raise UserError(f"{mask}: mask without an image (expected {hint})")
    for case_id, image in sorted(images.items()):
        if case_id not in masks:
            hint = mask_hint.format(id=case_id, name=image.name, suffix=volume_suffix(image))
            raise UserError(f"{image}: no mask for this image (expected {hint})")
    return [CaseSource(case_id, images[case_id], masks[case_id]) for case_id in sorted(images)]


def _pairs(raw: Path) -> list[CaseSource]:
    volumes = _volumes(raw)
    masks = [path for path in volumes if _stem(path).endswith(MASK_TAG)]
    images = [path for path in volumes if not _stem(path).endswith(MASK_TAG)]
    return _match(
        _by_id(images, "image"),
        _by_id(masks, "mask", MASK_TAG),
        image_hint="{id}{suffix} next to it",
        mask_hint="{id}" + MASK_TAG + "{suffix} next to it",
    )


def _msd(raw: Path) -> list[CaseSource]:
    if not (raw / "labelsTr").is_dir():
        raise UserError(f"{raw}: has imagesTr/ but no labelsTr/ (MSD layout); the labels are needed")
    return _match(
        _by_id(_volumes(raw / "imagesTr"), "image"),
        _by_id(_volumes(raw / "labelsTr"), "label"),
        image_hint="imagesTr/{name}",
        mask_hint="labelsTr/{name}",
    )


def _empty_hint(raw: Path) -> str:
    for sub in sorted(path for path in raw.iterdir() if path.is_dir() and path.name[0] not in "._"):
        if (sub / "imagesTr").is_dir() or _volumes(sub):
            return (
                f"; volumes found in {sub.name}/ — point RAW there (or merge parts, see data_prep/README.md)"
            )
    return ""


def discover_cases(raw: str | Path) -> tuple[list[CaseSource], str]:
    """All cases under ``raw`` and the layout name (``"pairs"`` or ``"msd"``).

    Raises:
        UserError: ``raw`` is missing or not a folder, holds no cases, mixes the two layouts, or has an
            image without a mask, a mask without an image, or two files for one case.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise UserError(f"{raw}: no such folder (expected raw volumes: CaseNN.mhd + CaseNN_segmentation.mhd)")
    if (raw / "imagesTr").is_dir():
        if _volumes(raw):
            raise UserError(f"{raw}: has both imagesTr/ (MSD layout) and top-level volumes; keep one layout")
        layout, cases = MSD, _msd(raw)
    else:
        layout, cases = PAIRS, _pairs(raw)
    if not cases:
        raise UserError(
            f"{raw}: no cases found (expected CaseNN.mhd + CaseNN_segmentation.mhd, NIfTI pairs named "
            f"the same way, or MSD imagesTr/ + labelsTr/){_empty_hint(raw)}"
        )
    return cases, layout


def _shown(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{value:g}" for value in values) + "]"


def check_pair(source: CaseSource) -> None:
    """UserError naming both files unless the mask lies on its image's voxel grid (headers only).

    The shape (z, y, x) must be equal (the image's first three axes for a 4-D image); spacing, origin and
    direction must agree within the tolerances of :func:`~mlbseg.prep.volumes.geometry_difference`.
    """
    image_size, image = read_header(source.image)
    mask_size, mask = read_header(source.mask)
    if mask_size != image_size:
        raise UserError(
            f"{source.mask}: mask shape (z, y, x) {mask_size[::-1]} differs from its image's "
            f"{image_size[::-1]} ({source.image})"
        )
    key = geometry_difference(mask, image)
    if key is not None:
        raise UserError(
            f"{source.mask}: mask {_AXES[key]} {_shown(mask[key])} differs from its image's "
            f"{_shown(image[key])} ({source.image}); the mask must be drawn on the image's grid"
        )


def check_pairs(sources: Iterable[CaseSource]) -> None:
    """:func:`check_pair` for every case, so that a mismatch stops ``prepare`` before any output exists."""
    for source in sources:
        check_pair(source)
