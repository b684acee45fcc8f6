"""``mlbseg synth`` and ``mlbseg prepare``: raw volumes in, the prepared slice dataset out.

The formats and the preprocessing are docs/design.md §2.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def synth(
    out: Path = typer.Argument(..., help="Folder to write CaseNN.mhd/.raw phantoms into."),
    cases: int = typer.Option(50, "--cases", min=1, help="Number of cases."),
    seed: int = typer.Option(0, "--seed", min=0, help="Random seed (same seed, same bytes)."),
    in_plane: tuple[int, int] = typer.Option((256, 512), "--in-plane", help="In-plane size range LOW HIGH."),
    slices: tuple[int, int] = typer.Option((15, 54), "--slices", help="Slice count range LOW HIGH."),
    fov: tuple[float, float] = typer.Option(
        (130.0, 200.0), "--fov", help="In-plane field of view range LOW HIGH in mm (small = gland-centred)."
    ),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Worker processes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
) -> None:
    """Write PROMISE12-layout MR phantoms with gland masks, for demos and tests."""
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
    )
    typer.echo(f"Wrote {len(ids)} phantom cases ({ids[0]}..{ids[-1]}) into {out}")


def prepare(
    raw: Path = typer.Argument(
        ..., help="Folder of raw volumes (PROMISE12 .mhd, NIfTI pairs, or MSD Task05)."
    ),
    prepared: Path = typer.Argument(..., help="Output folder for manifest.json and cases/*.npz."),
    size: int = typer.Option(144, "--size", min=16, help="In-plane slice size in pixels."),
    split: str = typer.Option("random", "--split", help="'paper', 'random', or a YAML/JSON split file."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed for the random split and the noisy masks."),
    channel: int = typer.Option(
        0, "--channel", min=0, help="Image channel of 4-D volumes (MSD Task05: 0 = T2)."
    ),
    labels: str = typer.Option(
        "auto",
        "--labels",
        help="'binary' (masks must be 0/1), 'merge' (label > 0), 'auto' (merge for MSD only).",
    ),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Worker processes."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace PREPARED if it exists."),
) -> None:
    """Slice volumes to SIZE×SIZE, normalise, split, and add calibrated L1–L3 noisy masks."""
    from mlbseg.prep.prepare import prepare_dataset

    prepare_dataset(
        raw,
        prepared,
        size=size,
        split=split,
        seed=seed,
        channel=channel,
        labels=labels,
        jobs=jobs,
        overwrite=overwrite,
    )
