"""``mlbseg export model``: write a trained model in a form that other tools run without mlbseg."""

from __future__ import annotations

from pathlib import Path

import typer

from mlbseg.cli._errors import reports_user_errors

app = typer.Typer(
    help="Export a trained model (torch.export program) for use without mlbseg.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _group() -> None:  # a callback keeps `export` a group of commands while it has only one
    """Export a trained model (torch.export program) for use without mlbseg."""


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


app.command("model")(reports_user_errors(model))
