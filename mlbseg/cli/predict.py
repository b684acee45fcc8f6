"""``mlbseg predict``: segment new volumes with a trained run, masks in the inputs' own geometry."""

from __future__ import annotations

from pathlib import Path

import typer


def predict(
    run_dir: Path = typer.Argument(..., help="A run folder written by `mlbseg train`."),
    input_path: Path = typer.Argument(
        ...,
        metavar="INPUT",
        help="A volume (.mhd, .mha, .nii, .nii.gz) or a folder; several channels: <case>_0000, _0001 files.",
    ),
    output: Path = typer.Argument(..., help="The mask file (its extension picks the format), or a folder."),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last, or a checkpoint path."),
    prepared: Path | None = typer.Option(
        None,
        "--prepared",
        help="Prepared dataset of a run whose checkpoint has no data record; default: the run's.",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace an existing output (an OUTPUT folder as a whole)."
    ),
) -> None:
    """Segment a volume (or a folder, all or nothing) into label masks in each input's own geometry.

    A model of several input channels reads a folder in nnU-Net naming (<case>_0000.nii.gz,
    <case>_0001.nii.gz, ...) and writes OUTPUT/<case>.nii.gz per case.
    """
    from mlbseg.seg.predict import load_predictor, plan_outputs, predict_all

    plan_outputs(input_path, output, overwrite)  # the paths, checked before the model is loaded
    predictor = load_predictor(run_dir, checkpoint, prepared, device)
    pairs = plan_outputs(input_path, output, overwrite, predictor.channels)
    predict_all(predictor, input_path, output, pairs, overwrite=overwrite)
    for _, target in pairs:
        typer.echo(f"wrote {target}")
