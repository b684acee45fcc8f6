"""``mlbseg prepare RAW PREPARED``: raw volumes -> normalised SIZE² slices, split, calibrated noisy masks.

Steps: discover cases (:mod:`~mlbseg.prep.discovery`), split them (:mod:`~mlbseg.prep.splits`), convert
every case in parallel (:mod:`~mlbseg.prep.convert`), calibrate the L1–L3 noise levels of the chosen
noise model on the train masks (:mod:`~mlbseg.prep.calibrate`, :mod:`~mlbseg.prep.noise_models`), add
the noisy masks to the train cases in parallel, and write the manifest (:mod:`~mlbseg.prep.manifest`).
All of it happens in a temporary sibling of PREPARED that is renamed into place at the end
(:mod:`~mlbseg.engine.atomic`): after an error nothing is left behind.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from mlbseg import __version__
from mlbseg.engine.atomic import atomic_folder, check_target
from mlbseg.errors import UserError
from mlbseg.prep.annotations import Annotation, check_annotation_grids, find_annotations
from mlbseg.prep.calibrate import calibrate_levels
from mlbseg.prep.convert import BINARY, KEEP, MERGE, ConvertOptions, add_noisy_masks, convert_case
from mlbseg.prep.discovery import (
    MSD,
    NNUNET,
    CaseSource,
    RawDataset,
    check_pairs,
    discover_dataset,
    require_masks,
)
from mlbseg.prep.label_noise import calibrate_label_levels
from mlbseg.prep.manifest import CASES, FORMAT_VERSION, write_manifest
from mlbseg.prep.noise import LEVELS, TARGET_DICE
from mlbseg.prep.noise_models import DEFAULT_NOISE_MODEL, NoiseModel, noise_model_by_name
from mlbseg.prep.normalize import NORMALIZATION
from mlbseg.prep.pool import run_tasks
from mlbseg.prep.report import print_summary
from mlbseg.prep.splits import SPLITS, make_split

LABEL_MODES = ("auto", BINARY, MERGE, KEEP)
BINARY_LABELS = {"background": 0, "foreground": 1}
MIN_SIZE = 16
_STAGING = "staging"


def _check_options(size: int, seed: int, *, channels: tuple[int, ...], labels: str, jobs: int) -> None:
    if size < MIN_SIZE:
        raise UserError(f"--size {size}: expected at least {MIN_SIZE}")
    if seed < 0 or jobs < 1:
        raise UserError(f"--seed {seed} --jobs {jobs}: expected seed >= 0, jobs >= 1")
    if not channels or min(channels) < 0 or len(set(channels)) != len(channels):
        raise UserError(f"--channels {_joined(channels)}: expected distinct channel indices >= 0, e.g. 0,1")
    if labels not in LABEL_MODES:
        raise UserError(f"--labels {labels}: choose one of {', '.join(LABEL_MODES)}")


def _joined(values: tuple[int, ...]) -> str:
    return ",".join(map(str, values))


def _check_paths(raw: Path, prepared: Path, overwrite: bool) -> None:
    real_raw, real_prepared = raw.resolve(), prepared.resolve()
    if real_prepared == real_raw or real_prepared in real_raw.parents:
        raise UserError(f"{prepared}: the output must not be the raw folder {raw} or contain it")
    check_target(prepared, overwrite)


def _command(
    raw: Path, prepared: Path, *, options: dict[str, Any], noisy_labels: Sequence[str | Path]
) -> str:
    """The equivalent ``mlbseg prepare`` command line (``--meta``/``--test``/``--val`` only where given)."""
    words = [f"--{key}" if value is not None else "" for key, value in options.items()]
    pairs = [(word, str(value)) for word, value in zip(words, options.values(), strict=True) if word]
    folders = [("--noisy-labels", str(folder)) for folder in noisy_labels]
    return shlex.join(
        ["mlbseg", "prepare", str(raw), str(prepared), *(w for pair in pairs + folders for w in pair)]
    )


def label_mode(labels: str, layout: str) -> str:
    """The label mode ``--labels`` resolves to: ``auto`` keeps nnU-Net labels, merges MSD, else binary."""
    if labels != "auto":
        return labels
    return {NNUNET: KEEP, MSD: MERGE}.get(layout, BINARY)


def _convert_options(size: int, channels: tuple[int, ...], mode: str, dataset: RawDataset) -> ConvertOptions:
    """The options of every case; UserError for a channel the nnU-Net dataset does not declare."""
    if dataset.num_channels is not None and max(channels) >= dataset.num_channels:
        raise UserError(
            f"--channels {_joined(channels)}: dataset.json declares channels 0..{dataset.num_channels - 1}"
        )
    declared = dataset.declared_labels if mode == KEEP else None
    return ConvertOptions(size, channels, mode, None if declared is None else len(declared))


def _convert_all(
    sources: dict,
    role: dict[str, str],
    options: ConvertOptions,
    *,
    annotations: list[Annotation],
    folder: Path,
    jobs: int,
) -> tuple[dict, dict, dict]:
    """Convert every case in ``role`` (train cases with a reference into staging, for their noisy masks).

    Returns manifest records, the train references' resized masks and the label values of every mask
    file read ({file: [values]}).
    """
    ids = sorted(role)
    staged = {case_id: role[case_id] == "train" and sources[case_id].mask is not None for case_id in ids}
    tasks = [
        (
            sources[case_id],
            {a.name: a.files[case_id] for a in annotations if case_id in a.files},
            options,
            folder / (_STAGING if staged[case_id] else CASES) / f"{case_id}.npz",
        )
        for case_id in ids
    ]
    converted = run_tasks(convert_case, tasks, jobs, "convert")
    records = {
        case_id: {**record, "split": role[case_id]}
        for case_id, (record, _, _) in zip(ids, converted, strict=True)
    }
    masks = {case_id: mask for case_id, (_, mask, _) in zip(ids, converted, strict=True) if staged[case_id]}
    values = {path: found for _, _, by_file in converted for path, found in by_file.items()}
    return records, masks, values


def _source_files(source: CaseSource, channels: tuple[int, ...], raw: Path) -> dict[str, Any]:
    """``source_files``: ``image`` (nnU-Net: ``images``, one per channel) and ``mask``, relative to raw."""
    files: dict[str, Any] = {"image": source.image.relative_to(raw).as_posix()}
    if source.channel_files:
        files = {"images": [source.images[c].relative_to(raw).as_posix() for c in channels]}
    if source.mask is not None:
        files["mask"] = source.mask.relative_to(raw).as_posix()
    return files


def kept_labels(dataset: RawDataset, values: dict[Path, list[int]], references: set[Path]) -> dict[str, int]:
    """``{name: value}`` of ``--labels keep``: dataset.json's, or the values of the references (0..K-1).

    ``values``: the label values of every mask file read (references and annotations, sorted by path),
    ``references``: which of them are reference masks. A gap (a value above one no reference holds) is
    a UserError naming the first reference with that value, and so is an annotation value that is not one
    of the labels. Names come from :attr:`RawDataset.label_names`, else ``label<value>`` (0: background).
    """
    reference_values = {path: found for path, found in values.items() if path in references}
    labels = dataset.declared_labels
    if labels is None:
        found = sorted({value for case_values in reference_values.values() for value in case_values} | {0})
        for expected, value in enumerate(found):
            if value != expected:
                first = next(path for path in sorted(reference_values) if value in reference_values[path])
                raise UserError(
                    f"{first}: label value {value} but no mask holds {expected}; --labels keep needs "
                    "consecutive values 0..K-1 (nnU-Net's rule); relabel the masks or use --labels merge"
                )
        names = {0: "background", **dataset.label_names}
        labels = {names.get(value, f"label{value}"): value for value in found}
    for path, found in sorted(values.items()):
        outside = sorted(set(found) - set(labels.values()))
        if outside:
            raise UserError(
                f"{path}: noisy mask has values outside the dataset's labels 0..{len(labels) - 1} "
                f"({', '.join(map(str, outside[:5]))})"
            )
    return labels


def _named_classes(records: dict[str, dict[str, Any]], labels: dict[str, int]) -> None:
    """``noisy_dice_per_class`` of every record keyed by label name (K > 2); dropped for binary data."""
    names = {value: name for name, value in labels.items()}
    for record in records.values():
        per_class = record.pop("noisy_dice_per_class", None)
        if per_class is not None and len(labels) > 2:
            record["noisy_dice_per_class"] = {
                source: {names[value]: dice for value, dice in sorted(by_value.items()) if value in names}
                for source, by_value in per_class.items()
            }


def _add_noise(
    records: dict,
    masks: dict,
    *,
    seed: int,
    labels: dict[str, int],
    model: NoiseModel,
    folder: Path,
    jobs: int,
) -> dict[str, dict[str, Any]]:
    """Calibrate the strengths, write the train cases with their noisy masks; return the noise summary.

    Binary data: one strength (the reference model: kernel scale) per level
    (:mod:`~mlbseg.prep.calibrate`); K > 2: one per level and class, reported as {label name: s}
    (:mod:`~mlbseg.prep.label_noise`).
    """
    status = Console(stderr=True)
    if not masks:
        Console().print("No train case has a reference mask: no synthetic noise levels L1–L3")
        return {}
    if not any(mask.any() for mask in masks.values()):
        raise UserError(f"{folder}: every train mask is empty; check the mask files (or the --labels choice)")
    if status.is_terminal:
        status.print(f"Calibrating noise levels L1–L3 ({model.name} model) on the train masks…")
    num_labels = len(labels)
    if num_labels == 2:
        calibration = calibrate_levels(masks, seed, model=model)
        strengths: dict[str, Any] = {level: result.strength for level, result in calibration.items()}
        shown = strengths
    else:
        by_class = calibrate_label_levels(masks, seed, num_labels, model=model)
        strengths = {level: result.strengths for level, result in by_class.items()}
        by_value = {value: name for name, value in labels.items()}
        shown = {
            level: {by_value[v]: s for v, s in per_class.items()} for level, per_class in strengths.items()
        }
    ids = sorted(masks)
    add_noise = partial(
        add_noisy_masks, seed=seed, strengths=strengths, num_labels=num_labels, model=model.name
    )
    tasks = [(folder / _STAGING / f"{i}.npz", folder / CASES / f"{i}.npz", i) for i in ids]
    for case_id, (dice, per_class) in zip(ids, run_tasks(add_noise, tasks, jobs, "noisy masks"), strict=True):
        record = records[case_id]
        record["noisy_dice"] = {**dice, **record.get("noisy_dice", {})}
        if per_class is not None:
            record["noisy_dice_per_class"] = {**per_class, **record.get("noisy_dice_per_class", {})}
    foreground = [case_id for case_id in ids if masks[case_id].any()]  # as in calibrate.mean_dice
    return {
        level: {
            "target": TARGET_DICE[level],
            "strength": shown[level],
            "mean_dice": math.fsum(records[i]["noisy_dice"][level] for i in foreground) / len(foreground),
        }
        for level in LEVELS
    }


def _settings(
    raw: Path,
    command: str,
    *,
    seed: int,
    options: ConvertOptions,
    dataset: RawDataset,
    labels: dict[str, int],
) -> dict:
    """The manifest's dataset-wide entries (everything but split, noise and cases)."""
    return {
        "format_version": FORMAT_VERSION,
        "mlbseg_version": __version__,
        "source": str(raw),
        "command": command,
        "seed": seed,
        "slice_size": options.size,
        "normalization": NORMALIZATION,
        "labels": labels,
        "label_mode": options.label_mode,
        "channels": list(options.channels),
        "channel_names": [dataset.channel_names.get(c, str(c)) for c in options.channels],
        "layout": dataset.layout,
    }


def _annotation_summary(annotations: list[Annotation], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Manifest ``annotations``: per name its folder, the prepared cases holding it, their mean Dice."""
    summary = {}
    for annotation in annotations:
        cases = [case_id for case_id in annotation.files if case_id in records]
        dice = [
            records[i]["noisy_dice"][annotation.name]
            for i in cases
            if annotation.name in records[i].get("noisy_dice", {})
        ]
        summary[annotation.name] = {
            "source": str(annotation.folder),
            "num_cases": len(cases),
            "mean_dice": math.fsum(dice) / len(dice) if dice else None,
        }
    return summary


def prepare_dataset(
    raw: str | Path,
    prepared: str | Path,
    *,
    size: int = 144,
    split: str = "random",
    seed: int = 0,
    channels: tuple[int, ...] = (0,),
    labels: str = "auto",
    noisy_labels: Sequence[str | Path] = (),
    meta: int | None = None,
    test: int | None = None,
    val: int | None = None,
    noise_model: str = DEFAULT_NOISE_MODEL,
    jobs: int = 1,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Prepare the dataset in ``raw`` into ``prepared`` and return the manifest written.

    Args:
        raw: PROMISE12 MetaImage pairs, NIfTI pairs, an MSD Task05 folder or an nnU-Net v2 raw dataset
            (:mod:`~mlbseg.prep.discovery`).
        prepared: Output folder; must not exist unless ``overwrite``.
        size: Slice size in pixels (square).
        split: ``paper``, ``random`` or a YAML/JSON split file (:mod:`~mlbseg.prep.splits`).
        seed: Seed of the random split and the noisy masks.
        channels: Image channels stacked, in order (MSD Task05 and nnU-Net: 0 = T2, 1 = ADC).
        labels: ``binary`` (masks must be 0/1), ``merge`` (label > 0), ``keep`` (values 0..K-1 as classes),
            ``auto`` (keep for nnU-Net, merge for MSD, binary for pairs).
        noisy_labels: Folders of the user's own noisy annotations (:mod:`~mlbseg.prep.annotations`).
        meta: Meta cases of a random split (default: 3/50 of the cases with a reference).
        test: Test cases of a random split (default: 10/50 of the cases with a reference).
        val: Val cases of a random or paper split, taken from the train cases with a reference (default:
            random 10 % of them from 10 such cases on, else none; paper none;
            :func:`~mlbseg.prep.splits.default_val_count`).
        noise_model: ``relative`` or ``reference`` (:mod:`~mlbseg.prep.noise_models`).
        jobs: Worker processes.
        overwrite: Replace an existing ``prepared``.
    """
    channels = tuple(channels)
    _check_options(size, seed, channels=channels, labels=labels, jobs=jobs)
    model = noise_model_by_name(noise_model)
    given = {
        "size": size,
        "split": split,
        "seed": seed,
        "channels": _joined(channels),
        "labels": labels,
        "noise-model": model.name,
    }
    counts = {"meta": meta, "test": test, "val": val}
    command = _command(Path(raw), Path(prepared), options={**given, **counts}, noisy_labels=noisy_labels)
    raw, prepared = Path(raw).absolute(), Path(prepared).absolute()
    _check_paths(raw, prepared, overwrite)
    dataset = discover_dataset(raw)
    annotations = find_annotations(noisy_labels, dataset.cases)
    require_masks(dataset, {case_id for a in annotations for case_id in a.files})
    options = _convert_options(size, channels, label_mode(labels, dataset.layout), dataset)
    sources = {source.case_id: source for source in dataset.cases}
    referenced = [case_id for case_id, source in sources.items() if source.mask is not None]
    chosen = make_split(split, sorted(sources), seed, referenced=referenced, meta=meta, test=test, val=val)
    role = {case_id: name for name in SPLITS for case_id in chosen[name]}
    check_pairs(sources[case_id] for case_id in sorted(role))
    check_annotation_grids(annotations, sources)
    console = Console()
    left_out = sorted(set(sources) - set(role))
    if left_out:
        console.print(f"Not in the split, not prepared: {len(left_out)} case(s) ({', '.join(left_out[:5])}…)")
    with atomic_folder(prepared, overwrite) as folder:
        (folder / CASES).mkdir()
        (folder / _STAGING).mkdir()
        records, masks, values = _convert_all(
            sources, role, options, annotations=annotations, folder=folder, jobs=jobs
        )
        references = {sources[case_id].mask for case_id in role} - {None}
        names = kept_labels(dataset, values, references) if options.label_mode == KEEP else BINARY_LABELS
        noise = _add_noise(records, masks, seed=seed, labels=names, model=model, folder=folder, jobs=jobs)
        (folder / _STAGING).rmdir()
        _named_classes(records, names)
        for case_id, record in records.items():
            record["source_files"] = _source_files(sources[case_id], channels, raw)
        manifest = {
            **_settings(raw, command, seed=seed, options=options, dataset=dataset, labels=names),
            "split": chosen,
            "noise_model": model.name,
            "noise": noise,
            "annotations": _annotation_summary(annotations, records),
        }
        manifest["cases"] = records
        write_manifest(folder, manifest)
    print_summary(console, manifest, str(prepared))
    return manifest
