"""Read an nnU-Net v2 raw dataset (Isensee et al., "nnU-Net", Nature Methods 2021; its v2 dataset format).

Layout, as nnU-Net v2 documents it (``documentation/dataset_format.md``)::

    RAW/dataset.json                 {"channel_names": {"0": "T2", "1": "ADC"},
                                      "labels": {"background": 0, "PZ": 1, "TZ": 2},
                                      "numTraining": 32, "file_ending": ".nii.gz", ...}
    RAW/imagesTr/<case>_<XXXX><file_ending>   one 3-D file per channel, XXXX its 4-digit index
    RAW/labelsTr/<case><file_ending>          the reference label map (values 0..K-1)

mlbseg reads the four required keys and refuses what it cannot represent, each with one line naming
``dataset.json``: region-based labels (a list of values per name), label values that are not the
consecutive integers 0..K-1 with 0 the background, channel indices that are not 0..C-1, a file ending
SimpleITK and mlbseg do not both read (``.nii.gz``, ``.nii``, ``.mha``, ``.mhd``). A case may lack its
``labelsTr`` file (mask None) when a noisy annotation stands in for it (:mod:`mlbseg.prep.annotations`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbseg.errors import UserError
from mlbseg.prep.volumes import VOLUME_SUFFIXES

DATASET_JSON = "dataset.json"
REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class NnunetSpec:
    """The four required entries of an nnU-Net v2 ``dataset.json``, checked."""

    channel_names: dict[int, str]  # channel index -> name, indices 0..C-1
    labels: dict[str, int]  # name -> value, values 0..K-1, 0 the background
    num_training: int
    file_ending: str


def is_nnunet(raw: Path) -> bool:
    """True if ``raw`` holds ``imagesTr/`` and a ``dataset.json`` of nnU-Net v2 (MSD's has ``modality``)."""
    path = raw / DATASET_JSON
    if not (path.is_file() and (raw / "imagesTr").is_dir()):
        return False
    content = _read_json(path)
    return isinstance(content, dict) and ("channel_names" in content or "file_ending" in content)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err}); fix the file") from None


def _channel_names(path: Path, value: Any) -> dict[int, str]:
    if not isinstance(value, dict) or not value:
        raise UserError(f'{path}: channel_names must map channel indices to names, e.g. {{"0": "T2"}}')
    if not all(isinstance(key, str) and key.isdigit() for key in value):
        raise UserError(f'{path}: channel_names keys must be channel indices like "0"; got {list(value)}')
    names = {int(key): str(name) for key, name in value.items()}
    if sorted(names) != list(range(len(names))):
        raise UserError(
            f"{path}: channel_names must number the channels 0..{len(names) - 1}; got {list(value)}"
        )
    return dict(sorted(names.items()))


def _labels(path: Path, value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or len(value) < 2:
        raise UserError(
            f'{path}: labels must map names to values with a background, e.g. {{"background": 0, "tumor": 1}}'
        )
    for name, label in value.items():
        if isinstance(label, (list, tuple)):
            raise UserError(
                f"{path}: label '{name}' is region-based ({label}); mlbseg needs one integer value per label"
            )
        if isinstance(label, bool) or not isinstance(label, int):
            raise UserError(f"{path}: label '{name}' must be an integer value; got {label!r}")
    labels = dict(sorted(value.items(), key=lambda item: item[1]))
    if list(labels.values()) != list(range(len(labels))):
        raise UserError(
            f"{path}: label values must be the consecutive integers 0..{len(labels) - 1} (nnU-Net's rule); "
            f"got {sorted(value.values())}"
        )
    return labels


def read_dataset_json(raw: Path) -> NnunetSpec:
    """Read and check ``raw/dataset.json``; UserError (one line naming it) for anything mlbseg cannot use."""
    path = raw / DATASET_JSON
    content = _read_json(path)
    if not isinstance(content, dict):
        raise UserError(f"{path}: expected a JSON object with {', '.join(REQUIRED_KEYS)}")
    missing = [key for key in REQUIRED_KEYS if key not in content]
    if missing:
        raise UserError(
            f"{path}: missing required key(s) {', '.join(missing)} "
            f"(nnU-Net v2 needs {', '.join(REQUIRED_KEYS)})"
        )
    ending, count = content["file_ending"], content["numTraining"]
    if ending not in VOLUME_SUFFIXES:
        raise UserError(
            f"{path}: file_ending {ending!r} is not one mlbseg reads ({', '.join(VOLUME_SUFFIXES)})"
        )
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"{path}: numTraining must be a positive integer; got {count!r}")
    return NnunetSpec(
        _channel_names(path, content["channel_names"]), _labels(path, content["labels"]), count, ending
    )


def _files(folder: Path, ending: str) -> list[Path]:
    """Files of ``folder`` ending in ``ending``, skipping hidden and ``_``-prefixed names; sorted."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.name[0] not in "._" and p.name.endswith(ending)
    )


def channel_files(raw: Path, spec: NnunetSpec) -> dict[str, dict[int, Path]]:
    """``imagesTr`` as {case: {channel: file}}; every case must have exactly the declared channels."""
    cases: dict[str, dict[int, Path]] = {}
    for path in _files(raw / "imagesTr", spec.file_ending):
        match = _CHANNEL_FILE.match(path.name[: -len(spec.file_ending)])
        if match is None:
            raise UserError(f"{path}: not named <case>_<XXXX>{spec.file_ending} (XXXX: the 4-digit channel)")
        channel = int(match["channel"])
        if channel not in spec.channel_names:
            raise UserError(
                f"{path}: channel {channel} is not in {DATASET_JSON}'s channel_names "
                f"(0..{len(spec.channel_names) - 1})"
            )
        cases.setdefault(match["case"], {})[channel] = path
    for case, files in sorted(cases.items()):
        for channel, name in spec.channel_names.items():
            if channel not in files:
                expected = raw / "imagesTr" / f"{case}_{channel:04d}{spec.file_ending}"
                raise UserError(
                    f"{expected}: missing (channel {channel} '{name}' of case {case}, {DATASET_JSON})"
                )
    return cases


def label_files(raw: Path, spec: NnunetSpec, cases: dict[str, dict[int, Path]]) -> dict[str, Path]:
    """``labelsTr`` as {case: file}; a label file of a case without images is an error."""
    labels = {
        path.name[: -len(spec.file_ending)]: path for path in _files(raw / "labelsTr", spec.file_ending)
    }
    for case, path in sorted(labels.items()):
        if case not in cases:
            raise UserError(
                f"{path}: label file without images (expected imagesTr/{case}_0000{spec.file_ending})"
            )
    if len(cases) != spec.num_training:
        raise UserError(
            f"{raw / DATASET_JSON}: numTraining is {spec.num_training} "
            f"but imagesTr/ holds {len(cases)} case(s)"
        )
    return labels
