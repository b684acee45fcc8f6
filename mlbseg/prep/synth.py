"""``mlbseg synth``: write phantom cases as PROMISE12 pairs, or with two zones as an nnU-Net v2 dataset.

- default: ``CaseNN.mhd/.raw`` + ``CaseNN_segmentation.mhd/.raw`` (int16 image, uint8 0/1 gland), like
  PROMISE12;
- ``zones``: an nnU-Net v2 raw dataset (:mod:`mlbseg.prep.nnunet`): ``dataset.json`` (labels background
  0, PZ 1, TZ 2; channels 0 T2, 1 ADC), ``imagesTr/case_NNN_0000.nii.gz`` (T2) and ``_0001`` (ADC, another
  contrast), ``labelsTr/case_NNN.nii.gz`` (0/1/2);
- ``rater``: also a second rater's masks (:mod:`mlbseg.prep.rater`) in their own folder, one per case,
  named like the case's reference mask (``CaseNN_segmentation.mhd`` or ``case_NNN.nii.gz``), for
  ``mlbseg prepare --noisy-labels``.

Case ``i`` is drawn from ``SeedSequence(seed, spawn_key=(i,))`` (:mod:`mlbseg.prep.phantom`), its rater
from ``spawn_key=(i, 1)``, so a seed gives the same bytes whatever ``jobs`` is, and the first k cases of a
larger set equal a k-case set.
"""

from __future__ import annotations

import json
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np

from mlbseg.engine.atomic import atomic_folder, check_target
from mlbseg.errors import UserError
from mlbseg.prep.discovery import MASK_TAG
from mlbseg.prep.phantom import FIELD_OF_VIEW_MM, make_phantom
from mlbseg.prep.pool import run_tasks
from mlbseg.prep.rater import rater_labels
from mlbseg.prep.volumes import write_volume

ZONE_LABELS = {"background": 0, "PZ": 1, "TZ": 2}
ZONE_CHANNELS = {"0": "T2", "1": "ADC"}
NIFTI = ".nii.gz"
_RATER_STREAM = 1

MIN_IN_PLANE, MIN_SLICES = 32, 4
MIN_FOV_MM = 80.0  # the widest gland and its surroundings still fit


def case_ids(count: int, prefix: str = "Case", digits: int = 2) -> list[str]:
    """``Case00`` … for ``count`` cases: ``digits`` digits, more when there are over 10**digits.

    Example:
        >>> case_ids(3), case_ids(101)[-1], case_ids(2, "case_", 3)
        (['Case00', 'Case01', 'Case02'], 'Case100', ['case_000', 'case_001'])
    """
    width = max(digits, len(str(count - 1)))
    return [f"{prefix}{index:0{width}d}" for index in range(count)]


def _check_range(name: str, bounds: tuple[int, int], minimum: int) -> None:
    low, high = bounds
    if not minimum <= low <= high:
        raise UserError(f"--{name} {low} {high}: expected {minimum} <= LOW <= HIGH")


def _write_case(
    folder: Path,
    case_id: str,
    index: int,
    *,
    seed: int,
    in_plane: tuple[int, int],
    slices: tuple[int, int],
    fov: tuple[float, float],
    zones: bool,
    rater: Path | None,
) -> None:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    phantom = make_phantom(rng, in_plane, slices, fov, adc=zones)
    if zones:
        write_volume(folder / "imagesTr" / f"{case_id}_0000{NIFTI}", phantom.image, phantom.geometry)
        write_volume(folder / "imagesTr" / f"{case_id}_0001{NIFTI}", phantom.adc, phantom.geometry)
        labels, mask_name = phantom.zones, f"{case_id}{NIFTI}"
        write_volume(folder / "labelsTr" / mask_name, labels, phantom.geometry)
    else:
        write_volume(folder / f"{case_id}.mhd", phantom.image, phantom.geometry)
        labels, mask_name = phantom.mask, f"{case_id}{MASK_TAG}.mhd"
        write_volume(folder / mask_name, labels, phantom.geometry)
    if rater is not None:
        rater_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index, _RATER_STREAM)))
        drawn = rater_labels(labels, phantom.geometry["spacing"], rater_rng)
        write_volume(rater / mask_name, drawn, phantom.geometry)


def _dataset_json(cases: int) -> str:
    """The nnU-Net v2 ``dataset.json`` of a ``zones`` phantom set."""
    spec = {
        "name": "mlbseg zone phantoms",
        "description": "Synthetic prostate MR (T2, ADC) with peripheral and transition zones, `mlbseg synth`",
        "channel_names": ZONE_CHANNELS,
        "labels": ZONE_LABELS,
        "numTraining": cases,
        "file_ending": NIFTI,
    }
    return json.dumps(spec, indent=1) + "\n"


def write_phantoms(
    out: str | Path,
    cases: int = 50,
    *,
    seed: int = 0,
    overwrite: bool = False,
    in_plane: tuple[int, int] = (256, 512),
    slices: tuple[int, int] = (15, 54),
    fov: tuple[float, float] = FIELD_OF_VIEW_MM,
    jobs: int = 1,
    zones: bool = False,
    rater: str | Path | None = None,
) -> list[str]:
    """Write ``cases`` phantoms into the new folder ``out``; return their ids.

    Args:
        out: Output folder; must not exist unless ``overwrite``.
        cases: Number of cases (ids ``Case00`` …, or ``case_000`` … with ``zones``).
        seed: Non-negative seed; same seed, same bytes.
        overwrite: Replace an existing ``out`` (and ``rater``).
        in_plane: (low, high) in-plane size in pixels; PROMISE12's 256/320/384/512 are used when in range.
        slices: (low, high) number of axial slices.
        fov: (low, high) in-plane field of view in mm.
        jobs: Worker processes.
        zones: Write an nnU-Net v2 dataset with two zones and two channels (module docstring).
        rater: Also write a synthetic second rater's masks into this new folder.
    """
    if cases < 1 or seed < 0:
        raise UserError(f"--cases {cases} --seed {seed}: expected at least one case and a seed >= 0")
    _check_range("in-plane", in_plane, MIN_IN_PLANE)
    _check_range("slices", slices, MIN_SLICES)
    if not MIN_FOV_MM <= fov[0] <= fov[1]:
        raise UserError(f"--fov {fov[0]:g} {fov[1]:g}: expected {MIN_FOV_MM:g} <= LOW <= HIGH (mm)")
    if rater is not None and Path(rater).absolute() == Path(out).absolute():
        raise UserError(f"--rater {rater}: must be another folder than OUT")
    check_target(Path(out).absolute(), overwrite)
    if rater is not None:
        check_target(Path(rater).absolute(), overwrite)
    ids = case_ids(cases, "case_", 3) if zones else case_ids(cases)
    with ExitStack() as stack:
        staging = stack.enter_context(atomic_folder(out, overwrite))
        rater_staging = None if rater is None else stack.enter_context(atomic_folder(rater, overwrite))
        if zones:
            for sub in ("imagesTr", "labelsTr"):
                (staging / sub).mkdir()
            (staging / "dataset.json").write_text(_dataset_json(cases))
        write_case = partial(
            _write_case,
            seed=seed,
            in_plane=tuple(in_plane),
            slices=tuple(slices),
            fov=tuple(fov),
            zones=zones,
            rater=rater_staging,
        )
        tasks = [(staging, case_id, index) for index, case_id in enumerate(ids)]
        run_tasks(write_case, tasks, jobs, "synth")
    return ids
