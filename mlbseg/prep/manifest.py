"""The prepared dataset on disk (docs/design.md §2): ``manifest.json`` plus one ``cases/<id>.npz`` per case.

``manifest.json`` keys: ``format_version`` (:data:`FORMAT_VERSION`), ``mlbseg_version``, ``source`` (raw
folder, absolute), ``command``, ``seed``, ``slice_size``, ``normalization``, ``labels`` ({name: value},
values 0..K-1, background 0), ``label_mode`` (binary/merge/keep), ``channels`` (the image channels
stacked, in order), ``channel_names``, ``layout`` (pairs/msd/nnunet), ``split`` ({train, val, meta, test:
sorted ids; val maybe empty}), ``noise_model`` (relative/reference), ``noise`` ({level: {target, strength
(the model's calibrated knob: a number, or {label name: s} for K > 2), mean_dice}}), ``annotations``
({name: {source, num_cases, mean_dice}}, the given noisy annotations) and ``cases``: {id: {id, split,
has_reference, num_slices, original_shape (z, y, x), spacing (mm, z, y, x), origin (mm, x, y, z),
direction (9 floats, row-major), intensity_window ([low, high] per channel), source_files {image or
images, mask} (relative to ``source``), noisy_dice {L1, L2, L3 for train cases with a reference;
annotation names where a reference exists} and, for K > 2, noisy_dice_per_class}} (geometry conventions:
:mod:`mlbseg.prep.volumes`).

``cases/<id>.npz`` (plain ``numpy.load``, no pickle): ``image`` float32 [S, C, size, size] in [0, 1]
(:mod:`mlbseg.prep.normalize`; C = len(channels)), ``mask`` uint8 [S, size, size] label values and
``mask_original`` uint8 [S, H, W] (the reference at original resolution; both absent for a case without a
reference), ``noisy_L1``, ``noisy_L2``, ``noisy_L3`` uint8 [S, size, size] label values for train cases
with a reference, and ``noisy_<name>`` for a given annotation (val, meta and test cases hold no synthetic
noisy labels). Masks are deflated, images stored; zip
timestamps are fixed, so the same input and seed give the same bytes.

A case id names files (``cases/<id>.npz`` and the outputs of other commands), so every id read from a
manifest or a split file must be a plain file name (:func:`check_case_id`): a damaged or hostile manifest
cannot make mlbseg read or write outside its folders.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlbseg.engine.atomic import write_text_atomic
from mlbseg.errors import UserError

FORMAT_VERSION = 2  # 2: ``image`` [S, C, h, w], ``labels`` {name: value}, ``channels``
MANIFEST = "manifest.json"
CASES = "cases"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_SEPARATORS = ("/", "\\", "\0")


def check_case_id(case_id: object, source: str | Path) -> str:
    """Return ``case_id`` if it is a plain file name; else a UserError naming ``source``, the file listing it.

    Refused: a non-string, the empty string, ``.``, ``..``, and anything holding a slash, a backslash or NUL
    (so absolute paths too).

    Example:
        >>> check_case_id("Case00", "manifest.json")
        'Case00'
    """
    if not isinstance(case_id, str) or case_id in ("", ".", "..") or any(c in case_id for c in _SEPARATORS):
        raise UserError(
            f"{source}: case id {case_id!r} is not a plain file name (empty, '.', '..' or with a path "
            "separator); use ids like Case00"
        )
    return case_id


def case_path(prepared: str | Path, case_id: str) -> Path:
    """``PREPARED/cases/<id>.npz``; UserError (naming the manifest) if ``case_id`` would leave ``cases/``."""
    return Path(prepared) / CASES / f"{check_case_id(case_id, Path(prepared) / MANIFEST)}.npz"


def save_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an ``.npz`` for ``numpy.load``; identical arrays give identical bytes.

    Integer arrays (masks) are deflated; float arrays are stored as they are, since their noisy mantissas
    shrink by about 10% for most of the write time.
    """
    with zipfile.ZipFile(path, "w") as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED if array.dtype.kind == "f" else zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.ascontiguousarray(array), allow_pickle=False)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, read into memory; UserError if it is missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"{path}: no such file; was the prepared folder written completely by `mlbseg prepare`?"
        )
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise UserError(f"{path}: cannot read this case file ({err}); run `mlbseg prepare` again") from None


def load_case(prepared: str | Path, case_id: str) -> dict[str, np.ndarray]:
    """The arrays of one prepared case (``image``, ``mask``, ``mask_original``, ``noisy_*``)."""
    return load_npz(case_path(prepared, case_id))


def label_names(manifest: Mapping[str, Any]) -> list[str]:
    """The dataset's label names ordered by value (index k is label value k; 0 is the background).

    Example:
        >>> label_names({"labels": {"background": 0, "prostate": 1}})
        ['background', 'prostate']
    """
    labels = manifest["labels"]
    return sorted(labels, key=labels.__getitem__)


def write_manifest(folder: str | Path, manifest: Mapping[str, Any]) -> None:
    """Write ``manifest.json`` (keys in insertion order, indented, trailing newline)."""
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    write_text_atomic(Path(folder) / MANIFEST, text + "\n")


def _check_ids(manifest: dict[str, Any], path: Path) -> None:
    """Every case id of ``cases`` and ``split`` must be a plain file name (:func:`check_case_id`)."""
    cases, split = manifest.get("cases", {}), manifest.get("split", {})
    if not (isinstance(cases, dict) and isinstance(split, dict)) or not all(
        isinstance(ids, list) for ids in split.values()
    ):
        raise UserError(
            f"{path}: 'cases' must map ids to records and 'split' names to lists of ids; "
            "run `mlbseg prepare` again"
        )
    for case_id in [*cases, *(case_id for ids in split.values() for case_id in ids)]:
        check_case_id(case_id, path)


def load_manifest(prepared: str | Path) -> dict[str, Any]:
    """Read ``PREPARED/manifest.json``.

    Raises:
        UserError: The file is missing, unreadable or of another format, or lists a case id that is not a
            plain file name (:func:`check_case_id`).
    """
    path = Path(prepared) / MANIFEST
    if not Path(prepared).is_dir():
        raise UserError(f"{prepared}: no such folder; create it with `mlbseg prepare RAW {prepared}`")
    if not path.is_file():
        raise UserError(f"{path}: missing; {prepared} is not a folder written by `mlbseg prepare`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); run `mlbseg prepare` again") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise UserError(
            f"{path}: format version {version!r}, but this mlbseg reads version {FORMAT_VERSION}; "
            "run `mlbseg prepare` again with this version"
        )
    _check_ids(manifest, path)
    return manifest
