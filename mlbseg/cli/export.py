"""``mlbseg export model|nnunet``: a trained model, or a prepared dataset's noisy labels, for other tools."""

from __future__ import annotations

from pathlib import Path

import typer

from mlbseg.cli._errors import reports_user_errors

app = typer.Typer(
    help="Export a trained model (torch.export program) or a prepared dataset (nnU-Net v2 raw dataset).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def model(
    run_dir: Path = typer.Argument(..., help="A run folder written by `mlbseg train`."),
    out: Path = typer.Argument(..., help="The program file to write; must end in .pt2."),
    checkpoint: str = typer.Option("final", "--checkpoint", help="final, last, or a checkpoint path."),
    prepared: Path | None = typer.Option(
        None, "--prepared", help="Prepared dataset of a run whose checkpoint has no data record."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
) -> None:
    """The network as a torch.export program (dynamic batch size) with its data record in mlbseg_data.json.

    Load it with plain torch: torch.export.load(OUT, extra_files={"mlbseg_data.json": ""}).module().
    """
    from mlbseg.seg.export import export_model

    export_model(run_dir, out, checkpoint=checkpoint, prepared=prepared, overwrite=overwrite)
    typer.echo(f"wrote {out}")


def nnunet(
    prepared: Path = typer.Argument(..., help="A folder written by `mlbseg prepare`."),
    out: Path = typer.Argument(
        ..., help="The nnU-Net v2 raw dataset folder to write (e.g. Dataset501_Noisy)."
    ),
    noise: str = typer.Option(
        ..., "--noise", help="Labels of the train cases: L1, L2, L3, clean or a given annotation's name."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUT."),
) -> None:
    """The prepared dataset as an nnU-Net v2 raw dataset: train cases with the chosen noisy labels.

    Meta cases go to labelsTr with their clean reference (MLB-Seg trains on them too), test cases' images to
    imagesTs; everything at the prepared slice grid, where the noisy labels exist. Train nnU-Net on it for
    a supervised baseline on exactly the labels MLB-Seg sees.
    """
    from mlbseg.prep.nnunet_export import export_nnunet

    counts = export_nnunet(prepared, out, noise=noise, overwrite=overwrite)
    left_out = (
        f", {counts['left_out']} train case(s) without {noise} labels left out" if counts["left_out"] else ""
    )
    if counts.get("val"):
        left_out += f", {counts['val']} val case(s) left out (held out to validate on)"
    typer.echo(
        f"wrote {out}: {counts['train']} train + {counts['meta']} meta cases in labelsTr, "
        f"{counts['test']} test cases in imagesTs{left_out}"
    )


app.command("model")(reports_user_errors(model))
app.command("nnunet")(reports_user_errors(nnunet))
