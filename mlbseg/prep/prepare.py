"""``mlbseg prepare RAW PREPARED``: raw volumes -> normalised SIZE² slices, split, calibrated noisy masks.

Steps: discover cases (:mod:`~mlbseg.prep.discovery`), split them (:mod:`~mlbseg.prep.splits`), convert
every case in parallel (:mod:`~mlbseg.prep.convert`), calibrate the L1–L3 noise strengths on the train
masks (:mod:`~mlbseg.prep.calibrate`), add the noisy masks to the train cases in parallel, and write the
manifest (:mod:`~mlbseg.prep.manifest`). All of it happens in a temporary sibling of PREPARED that is
renamed into place at the end (:mod:`~mlbseg.engine.atomic`): after an error nothing is left behind.
"""

from __future__ import annotations

import math
import shlex
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from mlbseg import __version__
from mlbseg.engine.atomic import atomic_folder, check_target
from mlbseg.errors import UserError
from mlbseg.prep.calibrate import calibrate_levels
from mlbseg.prep.convert import ConvertOptions, add_noisy_masks, convert_case
from mlbseg.prep.discovery import MSD, check_pairs, discover_cases
from mlbseg.prep.manifest import CASES, FORMAT_VERSION, write_manifest
from mlbseg.prep.normalize import NORMALIZATION
from mlbseg.prep.pool import run_tasks
from mlbseg.prep.report import print_summary
from mlbseg.prep.splits import SPLITS, make_split

LABEL_MODES = ("auto", "binary", "merge")
BINARY_LABELS = {"background": 0, "foreground": 1}
MIN_SIZE = 16
_STAGING = "staging"


def _check_options(size: int, seed: int, *, channel: int, labels: str, jobs: int) -> None:
    if size < MIN_SIZE:
        raise UserError(f"--size {size}: expected at least {MIN_SIZE}")
    if seed < 0 or channel < 0 or jobs < 1:
        raise UserError(
            f"--seed {seed} --channel {channel} --jobs {jobs}: expected seed, channel >= 0, jobs >= 1"
        )
    if labels not in LABEL_MODES:
        raise UserError(f"--labels {labels}: choose one of {', '.join(LABEL_MODES)}")


def _check_paths(raw: Path, prepared: Path, overwrite: bool) -> None:
    real_raw, real_prepared = raw.resolve(), prepared.resolve()
    if real_prepared == real_raw or real_prepared in real_raw.parents:
        raise UserError(f"{prepared}: the output must not be the raw folder {raw} or contain it")
    check_target(prepared, overwrite)


def _command(
    raw: Path, prepared: Path, *, size: int, split: str, seed: int, channel: int, labels: str
) -> str:
    options = ["--size", size, "--split", split, "--seed", seed, "--channel", channel, "--labels", labels]
    return shlex.join(["mlbseg", "prepare", str(raw), str(prepared), *map(str, options)])


def _convert_all(
    sources: dict, role: dict[str, str], options: ConvertOptions, *, raw: Path, folder: Path, jobs: int
) -> tuple[dict, dict]:
    """Convert every case in ``role``; return manifest records and the train cases' resized masks."""
    ids = sorted(role)
    tasks = [
        (sources[case_id], options, raw, _staged_path(folder, case_id, role[case_id])) for case_id in ids
    ]
    converted = run_tasks(convert_case, tasks, jobs, "convert")
    records = {
        case_id: {**record, "split": role[case_id]}
        for case_id, (record, _) in zip(ids, converted, strict=True)
    }
    masks = {
        case_id: mask for case_id, (_, mask) in zip(ids, converted, strict=True) if role[case_id] == "train"
    }
    return records, masks


def _staged_path(folder: Path, case_id: str, split: str) -> Path:
    return folder / (_STAGING if split == "train" else CASES) / f"{case_id}.npz"


def _add_noise(
    records: dict, masks: dict, *, seed: int, folder: Path, jobs: int
) -> dict[str, dict[str, float]]:
    """Calibrate the strengths, write the train cases with their noisy masks; return the noise summary."""
    status = Console(stderr=True)
    if status.is_terminal:
        status.print("Calibrating noise levels L1–L3 on the train masks…")
    calibration = calibrate_levels(masks, seed)
    strengths = {level: result.strength for level, result in calibration.items()}
    ids = sorted(masks)
    add_noise = partial(add_noisy_masks, seed=seed, strengths=strengths)
    tasks = [(_staged_path(folder, i, "train"), folder / CASES / f"{i}.npz", i) for i in ids]
    for case_id, dice in zip(ids, run_tasks(add_noise, tasks, jobs, "noisy masks"), strict=True):
        records[case_id]["noisy_dice"] = dice
    foreground = [case_id for case_id in ids if masks[case_id].any()]  # as in calibrate.mean_dice
    return {
        level: {
            "target": result.target,
            "strength": result.strength,
            "mean_dice": math.fsum(records[i]["noisy_dice"][level] for i in foreground) / len(foreground),
        }
        for level, result in calibration.items()
    }


def _settings(raw: Path, command: str, *, seed: int, size: int, options: ConvertOptions, layout: str) -> dict:
    """The manifest's dataset-wide entries (everything but split, noise and cases)."""
    return {
        "format_version": FORMAT_VERSION,
        "mlbseg_version": __version__,
        "source": str(raw),
        "command": command,
        "seed": seed,
        "slice_size": size,
        "normalization": NORMALIZATION,
        "labels": BINARY_LABELS,
        "label_mode": "merge" if options.merge_labels else "binary",
        "channels": [options.channel],
        "layout": layout,
    }


def prepare_dataset(
    raw: str | Path,
    prepared: str | Path,
    *,
    size: int = 144,
    split: str = "random",
    seed: int = 0,
    channel: int = 0,
    labels: str = "auto",
    jobs: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prepare the dataset in ``raw`` into ``prepared`` and return the manifest written.

    Args:
        raw: PROMISE12 MetaImage pairs, NIfTI pairs, or an MSD Task05 folder (:mod:`~mlbseg.prep.discovery`).
        prepared: Output folder; must not exist unless ``overwrite``.
        size: Slice size in pixels (square).
        split: ``paper``, ``random`` or a YAML/JSON split file (:mod:`~mlbseg.prep.splits`).
        seed: Seed of the random split and the noisy masks.
        channel: Image channel of 4-D volumes (MSD Task05: 0 = T2, 1 = ADC).
        labels: ``binary`` (masks must be 0/1), ``merge`` (label > 0), ``auto`` (merge for MSD only).
        jobs: Worker processes.
        overwrite: Replace an existing ``prepared``.
    """
    _check_options(size, seed, channel=channel, labels=labels, jobs=jobs)
    command = _command(
        Path(raw), Path(prepared), size=size, split=split, seed=seed, channel=channel, labels=labels
    )
    raw, prepared = Path(raw).absolute(), Path(prepared).absolute()
    _check_paths(raw, prepared, overwrite)
    found, layout = discover_cases(raw)
    sources = {source.case_id: source for source in found}
    chosen = make_split(split, sorted(sources), seed)
    role = {case_id: name for name in SPLITS for case_id in chosen[name]}
    check_pairs(sources[case_id] for case_id in sorted(role))
    options = ConvertOptions(size, channel, labels == "merge" or (labels == "auto" and layout == MSD))
    console = Console()
    left_out = sorted(set(sources) - set(role))
    if left_out:
        console.print(f"Not in the split, not prepared: {len(left_out)} case(s) ({', '.join(left_out[:5])}…)")
    with atomic_folder(prepared, overwrite) as folder:
        (folder / CASES).mkdir()
        (folder / _STAGING).mkdir()
        records, masks = _convert_all(sources, role, options, raw=raw, folder=folder, jobs=jobs)
        if not any(mask.any() for mask in masks.values()):
            raise UserError(
                f"{raw}: every train mask is empty; check the mask files (or the --labels choice)"
            )
        noise = _add_noise(records, masks, seed=seed, folder=folder, jobs=jobs)
        (folder / _STAGING).rmdir()
        manifest = {
            **_settings(raw, command, seed=seed, size=size, options=options, layout=layout),
            "split": chosen,
            "noise": noise,
        }
        manifest["cases"] = records
        write_manifest(folder, manifest)
    print_summary(console, manifest, str(prepared))
    return manifest
