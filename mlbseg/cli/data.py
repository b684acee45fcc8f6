"""``mlbseg synth`` and ``mlbseg prepare``: raw volumes in, the prepared slice dataset out.

The formats and the preprocessing are docs/design.md §2.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def synth(
    out: Path = typer.Argument(
        ..., help="Folder to write CaseNN.mhd/.raw phantoms into (with --zones: an nnU-Net v2 dataset)."
    ),
    cases: int = typer.Option(50, "--cases", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (same seed, same bytes)."),
    in_plane: tuple[int, int] = typer.Option((256, 512), "--in-plane", help="In-plane size range LOW HIGH."),
    slices: tuple[int, int] = typer.Option((15, 54), "--slices", help="Slice count range LOW HIGH."),
    fov: tuple[float, float] = typer.Option(
        (130.0, 200.0), "--fov", help="In-plane field of view range LOW HIGH in mm (small = gland-centred)."
    ),
    zones: bool = typer.Option(
        False,
        "--zones",
        help="Two structures (PZ 1, TZ 2) and two channels (T2, ADC) as an nnU-Net v2 dataset.",
    ),
    rater: Path | None = typer.Option(
        None, "--rater", help="Also write a synthetic second rater's masks into this folder (default: none)."
    ),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Worker processes."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace OUT (and the --rater folder) if it exists."
    ),
) -> None:
    """Write MR phantoms with gland (or zone) masks, for demos and tests."""
    from mlbseg.prep.synth import write_phantoms

    ids = write_phantoms(
        out,
        cases=cases,
        seed=seed,
        overwrite=overwrite,
        in_plane=in_plane,
        slices=slices,
        fov=fov,
        jobs=jobs,
        zones=zones,
        rater=rater,
    )
    typer.echo(f"Wrote {len(ids)} phantom cases ({ids[0]}..{ids[-1]}) into {out}")
    if rater is not None:
        typer.echo(f"Wrote a second rater's masks of them into {rater}")


def _channel_list(text: str) -> tuple[int, ...]:
    """``--channels 0,1`` -> (0, 1); one line naming the option for anything else."""
    from mlbseg.errors import UserError

    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserError(
            f"--channels {text}: expected channel indices separated by commas, e.g. 0,1"
        ) from None


def prepare(
    raw: Path = typer.Argument(
        ..., help="Folder of raw volumes (PROMISE12 .mhd, NIfTI pairs, MSD Task05, or an nnU-Net v2 dataset)."
    ),
    prepared: Path = typer.Argument(..., help="Output folder for manifest.json and cases/*.npz."),
    size: int = typer.Option(144, "--size", min=16, help="In-plane slice size in pixels."),
    split: str = typer.Option("random", "--split", help="'paper', 'random', or a YAML/JSON split file."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for the random split and the noisy masks."),
    channels: str = typer.Option(
        "0",
        "--channels",
        "--channel",
        help="Image channels to stack, comma-separated (MSD/nnU-Net prostate: 0 = T2, 1 = ADC; default 0).",
    ),
    labels: str = typer.Option(
        "auto",
        "--labels",
        help="'binary' (masks must be 0/1), 'merge' (label > 0), 'keep' (values 0..K-1 as classes), "
        "'auto' (keep for nnU-Net, merge for MSD, binary for pairs).",
    ),
    binary: bool = typer.Option(False, "--binary", help="Merge all foreground labels (= --labels merge)."),
    noisy_labels: list[Path] = typer.Option(
        [],
        "--noisy-labels",
        help="Folder of own noisy masks named like the references, named by the folder; repeatable "
        "(default: none).",
    ),
    meta: int | None = typer.Option(
        None,
        "--meta",
        min=1,
        help="Meta cases of --split random (default: 3/50 of the cases with a reference).",
    ),
    test: int | None = typer.Option(
        None,
        "--test",
        min=1,
        help="Test cases of --split random (default: 10/50 of the cases with a reference).",
    ),
    val: int | None = typer.Option(
        None,
        "--val",
        min=0,
        help="Validation cases, taken from the train cases with a reference (default: --split random "
        "10% of them from 10 such cases on, else 0; --split paper 0; a split file lists its own).",
    ),
    noise_model: str = typer.Option(
        "relative",
        "--noise-model",
        help="'relative' (operations sized to each slice's structure) or 'reference' (the published "
        "code's operations and kernel tables, one kernel scale per level).",
    ),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Worker processes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace PREPARED if it exists."),
) -> None:
    """Slice volumes to SIZE×SIZE, normalise, split, and add calibrated L1–L3 noisy masks."""
    from mlbseg.errors import UserError
    from mlbseg.prep.prepare import prepare_dataset

    if binary and labels not in ("auto", "merge"):
        raise UserError(f"--binary --labels {labels}: --binary means --labels merge; give one of them")
    prepare_dataset(
        raw,
        prepared,
        size=size,
        split=split,
        seed=seed,
        channels=_channel_list(channels),
        labels="merge" if binary else labels,
        noisy_labels=noisy_labels,
        meta=meta,
        test=test,
        val=val,
        noise_model=noise_model,
        jobs=jobs,
        overwrite=overwrite,
    )
