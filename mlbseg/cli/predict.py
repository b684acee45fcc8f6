"""``mlbseg predict``: segment new volumes with a trained run, masks in the inputs' own geometry."""

from __future__ import annotations

from pathlib import Path

import typer


def predict(
    run_dir: Path = typer.Argument(..., help="A run folder written by `mlbseg train`."),
    input_path: Path = typer.Argument(
        ..., metavar="INPUT", help="A volume (.mhd, .mha, .nii, .nii.gz) or a folder."
    ),
    output: Path = typer.Argument(..., help="The mask file (its extension picks the format), or a folder."),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last, or a checkpoint path."),
    prepared: Path | None = typer.Option(
        None,
        "--prepared",
        help="Prepared dataset of the run (slice size, normalisation); default: the run's.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing output (an OUTPUT folder as a whole)."
    ),
) -> None:
    """Segment a volume (or a folder of them, all or nothing) into 0/1 masks in each input's own geometry."""
    from mlbseg.seg.predict import load_predictor, plan_outputs, predict_all

    pairs = plan_outputs(input_path, output, overwrite)
    predictor = load_predictor(run_dir, checkpoint, prepared, device)
    predict_all(predictor, input_path, output, pairs, overwrite=overwrite)
    for _, target in pairs:
        typer.echo(f"wrote {target}")
