"""``mlbseg synth``: write PROMISE12-layout phantom cases (``CaseNN.mhd/.raw`` + ``CaseNN_segmentation``).

Case ``i`` is drawn from ``SeedSequence(seed, spawn_key=(i,))`` (:mod:`mlbseg.prep.phantom`), so a seed
gives the same bytes whatever ``jobs`` is, and the first k cases of a larger set equal a k-case set.
Images are int16, masks uint8 0/1, as MetaImage with a separate ``.raw`` data file, like PROMISE12.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np

from mlbseg.engine.atomic import atomic_folder
from mlbseg.errors import UserError
from mlbseg.prep.discovery import MASK_TAG
from mlbseg.prep.phantom import FIELD_OF_VIEW_MM, make_phantom
from mlbseg.prep.pool import run_tasks
from mlbseg.prep.volumes import write_volume

MIN_IN_PLANE, MIN_SLICES = 32, 4
MIN_FOV_MM = 80.0  # the widest gland and its surroundings still fit


def case_ids(count: int) -> list[str]:
    """``Case00`` … for ``count`` cases: two digits, more when there are over 100.

    Example:
        >>> case_ids(3), case_ids(101)[-1]
        (['Case00', 'Case01', 'Case02'], 'Case100')
    """
    width = max(2, len(str(count - 1)))
    return [f"Case{index:0{width}d}" for index in range(count)]


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
) -> None:
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
    phantom = make_phantom(rng, in_plane, slices, fov)
    write_volume(folder / f"{case_id}.mhd", phantom.image, phantom.geometry)
    write_volume(folder / f"{case_id}{MASK_TAG}.mhd", phantom.mask, phantom.geometry)


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
) -> list[str]:
    """Write ``cases`` phantoms into the new folder ``out``; return their ids.

    Args:
        out: Output folder; must not exist unless ``overwrite``.
        cases: Number of cases (ids ``Case00`` …).
        seed: Non-negative seed; same seed, same bytes.
        overwrite: Replace an existing ``out``.
        in_plane: (low, high) in-plane size in pixels; PROMISE12's 256/320/384/512 are used when in range.
        slices: (low, high) number of axial slices.
        fov: (low, high) in-plane field of view in mm.
        jobs: Worker processes.
    """
    if cases < 1 or seed < 0:
        raise UserError(f"--cases {cases} --seed {seed}: expected at least one case and a seed >= 0")
    _check_range("in-plane", in_plane, MIN_IN_PLANE)
    _check_range("slices", slices, MIN_SLICES)
    if not MIN_FOV_MM <= fov[0] <= fov[1]:
        raise UserError(f"--fov {fov[0]:g} {fov[1]:g}: expected {MIN_FOV_MM:g} <= LOW <= HIGH (mm)")
    ids = case_ids(cases)
    with atomic_folder(out, overwrite) as staging:
        write_case = partial(
            _write_case, seed=seed, in_plane=tuple(in_plane), slices=tuple(slices), fov=tuple(fov)
        )
        tasks = [(staging, case_id, index) for index, case_id in enumerate(ids)]
        run_tasks(write_case, tasks, jobs, "synth")
    return ids
