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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace existing outputs."),
) -> None:
    """Segment a volume (or a folder of them) into 0/1 masks in the input's own size and geometry."""
    from mlbseg.seg.predict import load_predictor, plan_outputs, predict_file

    pairs = plan_outputs(input_path, output, overwrite)
    predictor = load_predictor(run_dir, checkpoint, prepared, device)
    for image, target in pairs:
        predict_file(predictor, image, target, overwrite=overwrite)
        typer.echo(f"wrote {target}")
