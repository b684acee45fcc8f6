"""Find the cases of a raw dataset folder (docs/design.md §2.1).

Three layouts are recognised:

- **pairs** (PROMISE12 and NIfTI): ``ID.mhd`` (+ ``ID.raw``) or ``ID.nii[.gz]`` next to
  ``ID_segmentation.<same kinds>``, all directly in the folder;
- **msd** (Medical Segmentation Decathlon Task05): ``imagesTr/ID.nii.gz`` (4-D T2+ADC) with
  ``labelsTr/ID.nii.gz`` (0 background, 1 PZ, 2 TZ);
- **nnunet** (nnU-Net v2 raw dataset): ``dataset.json`` with ``channel_names``, ``labels``,
  ``numTraining`` and ``file_ending``, ``imagesTr/ID_XXXX<file_ending>`` (one file per channel) and
  ``labelsTr/ID<file_ending>`` (:mod:`mlbseg.prep.nnunet`).

Names starting with ``.`` or ``_`` (macOS ``._*`` forks, ``.DS_Store``) and files that are not volumes
(``.raw`` data files, notes) are ignored. Cases come back sorted by id, whatever the order of the directory
listing. An image without a mask comes back with ``mask`` None; :func:`require_masks` refuses it unless
a noisy annotation stands in for the reference (:mod:`mlbseg.prep.annotations`). :func:`check_pairs` then
compares the grids of each case's files from the headers alone, before anything is converted.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlbseg.errors import UserError
from mlbseg.prep.nnunet import channel_files, is_nnunet, label_files, read_dataset_json
from mlbseg.prep.volumes import geometry_difference, read_header, volume_suffix

MASK_TAG = "_segmentation"
PAIRS, MSD, NNUNET = "pairs", "msd", "nnunet"
MSD_CHANNEL_NAMES = {0: "T2", 1: "ADC"}  # Task05's modality entry
MSD_LABEL_NAMES = {0: "background", 1: "PZ", 2: "TZ"}  # Task05's labels entry
_AXES = {"spacing": "spacing (z, y, x)", "origin": "origin (x, y, z)", "direction": "direction"}


@dataclass(frozen=True)
class CaseSource:
    """Where one case's image channels and reference mask live.

    Attributes:
        case_id: The case's id (file names of its outputs).
        images: One file holding every channel (pairs, msd), or one 3-D file per channel, index = channel
            (nnunet; ``channel_files`` True).
        mask: The reference label map, or None for an image without one.
        mask_name: The file name the reference has, or would have (noisy annotations are named like it).
        channel_files: Whether ``images`` holds one file per channel.
    """

    case_id: str
    images: tuple[Path, ...]
    mask: Path | None
    mask_name: str
    channel_files: bool = False

    @property
    def image(self) -> Path:
        """The (first) image file: the one whose grid every other file of the case must share."""
        return self.images[0]


@dataclass(frozen=True)
class RawDataset:
    """A discovered raw dataset: its layout, its cases and what it declares about channels and labels.

    Attributes:
        layout: ``pairs``, ``msd`` or ``nnunet``.
        cases: Sorted by id.
        channel_names: Known channel names by index (dataset.json, or MSD Task05's); others are str(index).
        label_names: Known label names by value (dataset.json, or MSD Task05's); others are ``label<v>``.
        declared_labels: nnunet: ``{name: value}`` from dataset.json, the labels masks must keep to;
            else None (kept labels are the values found).
        num_channels: nnunet: the declared channel count; else None (the files tell).
    """

    layout: str
    cases: list[CaseSource]
    channel_names: dict[int, str] = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=dict)
    declared_labels: dict[str, int] | None = None
    num_channels: int | None = None


def volume_files(folder: Path) -> list[Path]:
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
    images: dict[str, Path], masks: dict[str, Path], image_hint: str, mask_name: str
) -> list[CaseSource]:
    """Pair images with masks by id (an image without one gets mask None).

    ``image_hint`` names a mask's missing image (fields: id, name, suffix), ``mask_name`` the file name of
    an image's reference (fields: id, suffix).
    """
    for case_id, mask in sorted(masks.items()):
        if case_id not in images:
            hint = image_hint.format(id=case_id, name=mask.name, suffix=volume_suffix(mask))
            raise UserError(f"{mask}: mask without an image (expected {hint})")
    return [
        CaseSource(
            case_id,
            (images[case_id],),
            masks.get(case_id),
            mask_name.format(id=case_id, suffix=volume_suffix(images[case_id])),
        )
        for case_id in sorted(images)
    ]


def _pairs(raw: Path) -> list[CaseSource]:
    volumes = volume_files(raw)
    masks = [path for path in volumes if _stem(path).endswith(MASK_TAG)]
    images = [path for path in volumes if not _stem(path).endswith(MASK_TAG)]
    return _match(
        _by_id(images, "image"),
        _by_id(masks, "mask", MASK_TAG),
        image_hint="{id}{suffix} next to it",
        mask_name="{id}" + MASK_TAG + "{suffix}",
    )


def _msd(raw: Path) -> list[CaseSource]:
    if not (raw / "labelsTr").is_dir():
        raise UserError(f"{raw}: has imagesTr/ but no labelsTr/ (MSD layout); the labels are needed")
    return _match(
        _by_id(volume_files(raw / "imagesTr"), "image"),
        _by_id(volume_files(raw / "labelsTr"), "label"),
        image_hint="imagesTr/{name}",
        mask_name="{id}{suffix}",
    )


def _empty_hint(raw: Path) -> str:
    for sub in sorted(path for path in raw.iterdir() if path.is_dir() and path.name[0] not in "._"):
        if (sub / "imagesTr").is_dir() or volume_files(sub):
            return (
                f"; volumes found in {sub.name}/ — point RAW there (or merge parts, see data_prep/README.md)"
            )
    return ""


def _nnunet(raw: Path) -> RawDataset:
    spec = read_dataset_json(raw)
    images = channel_files(raw, spec)
    masks = label_files(raw, spec, images)
    cases = [
        CaseSource(
            case_id,
            tuple(files[channel] for channel in sorted(files)),
            masks.get(case_id),
            f"{case_id}{spec.file_ending}",
            channel_files=True,
        )
        for case_id, files in sorted(images.items())
    ]
    values = {value: name for name, value in spec.labels.items()}
    return RawDataset(NNUNET, cases, spec.channel_names, values, spec.labels, len(spec.channel_names))


def _msd_names(raw: Path) -> tuple[dict[int, str], dict[int, str]]:
    """Channel and label names of an MSD folder: its dataset.json's ``modality``/``labels``, or Task05's."""
    path = raw / "dataset.json"
    content: Any = {}
    if path.is_file():
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{path}: not valid JSON ({err}); fix or remove the file") from None

    def names(key: str, default: dict[int, str]) -> dict[int, str]:
        entry = content.get(key) if isinstance(content, dict) else None
        if isinstance(entry, dict) and all(str(k).isdigit() for k in entry):
            return {int(k): str(v) for k, v in entry.items()}
        return dict(default)

    return names("modality", MSD_CHANNEL_NAMES), names("labels", MSD_LABEL_NAMES)


def discover_dataset(raw: str | Path) -> RawDataset:
    """All cases under ``raw`` with their layout and declared names; masks may be missing (None).

    Raises:
        UserError: ``raw`` is missing or not a folder, holds no cases, mixes layouts, has a mask without
            an image or two files for one case, or (nnunet) a dataset.json or file name mlbseg cannot use.
    """
    raw = Path(raw)
    if not raw.is_dir():
        raise UserError(f"{raw}: no such folder (expected raw volumes: CaseNN.mhd + CaseNN_segmentation.mhd)")
    if (raw / "imagesTr").is_dir() and volume_files(raw):
        raise UserError(
            f"{raw}: has both imagesTr/ (MSD or nnU-Net layout) and top-level volumes; keep one layout"
        )
    if is_nnunet(raw):
        dataset = _nnunet(raw)
    elif (raw / "imagesTr").is_dir():
        if not (raw / "labelsTr").is_dir():
            raise UserError(f"{raw}: has imagesTr/ but no labelsTr/ (MSD layout); the labels are needed")
        channel_names, label_names = _msd_names(raw)
        dataset = RawDataset(MSD, _msd(raw), channel_names, label_names)
    else:
        dataset = RawDataset(PAIRS, _pairs(raw))
    if not dataset.cases:
        raise UserError(
            f"{raw}: no cases found (expected CaseNN.mhd + CaseNN_segmentation.mhd, NIfTI pairs named "
            f"the same way, MSD imagesTr/ + labelsTr/, or an nnU-Net v2 dataset){_empty_hint(raw)}"
        )
    return dataset


def mask_hint(source: CaseSource, layout: str) -> str:
    """Where the reference mask of ``source`` belongs, for messages (``labelsTr/x.nii.gz``, …)."""
    return f"{source.mask_name} next to it" if layout == PAIRS else f"labelsTr/{source.mask_name}"


def require_masks(dataset: RawDataset, annotated: Collection[str] = ()) -> None:
    """UserError for the first case without a reference mask, unless its id is in ``annotated``."""
    for source in dataset.cases:
        if source.mask is None and source.case_id not in annotated:
            raise UserError(
                f"{source.image}: no mask for this image (expected {mask_hint(source, dataset.layout)}; "
                "or give a noisy annotation of it with --noisy-labels)"
            )


def discover_cases(raw: str | Path) -> tuple[list[CaseSource], str]:
    """The cases of :func:`discover_dataset` and the layout name; every case must have its mask."""
    dataset = discover_dataset(raw)
    require_masks(dataset)
    return dataset.cases, dataset.layout


def _shown(values: Iterable[float]) -> str:
    return "[" + ", ".join(f"{value:g}" for value in values) + "]"


def check_grid(path: Path, reference: Path, what: str) -> None:
    """UserError naming both files unless ``path`` lies on the voxel grid of ``reference`` (headers only).

    The shape (z, y, x) must be equal (the first three axes of a 4-D image); spacing, origin and
    direction must agree within the tolerances of :func:`~mlbseg.prep.volumes.geometry_difference`.
    ``what`` names ``path`` in the message (``mask``, ``channel 1``, ``noisy mask``).
    """
    size, geometry = read_header(path)
    reference_size, reference_geometry = read_header(reference)
    if size != reference_size:
        raise UserError(
            f"{path}: {what} shape (z, y, x) {size[::-1]} differs from its image's "
            f"{reference_size[::-1]} ({reference})"
        )
    key = geometry_difference(geometry, reference_geometry)
    if key is not None:
        raise UserError(
            f"{path}: {what} {_AXES[key]} {_shown(geometry[key])} differs from its image's "
            f"{_shown(reference_geometry[key])} ({reference}); the {what} must be drawn on the image's grid"
        )


def check_pair(source: CaseSource) -> None:
    """:func:`check_grid` of every further channel file and of the mask against the case's first image."""
    for channel, path in enumerate(source.images[1:], start=1):
        check_grid(path, source.image, f"channel {channel}")
    if source.mask is not None:
        check_grid(source.mask, source.image, "mask")


def check_pairs(sources: Iterable[CaseSource]) -> None:
    """:func:`check_pair` for every case, so that a mismatch stops ``prepare`` before any output exists."""
    for source in sources:
        check_pair(source)
