"""``mlbseg train``: one segmentation run from a YAML config (docs/design.md §4)."""

from __future__ import annotations

from pathlib import Path

import typer


def train(
    config: Path = typer.Argument(
        ..., help="Run config: a YAML file or a shipped name (`mlbseg configs`), e.g. promise12_mlbseg."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override one key, e.g. --set data.noise=L1 (repeatable)."
    ),
    run_dir: Path | None = typer.Option(
        None, "--run-dir", help="Output folder; default runs/<name>-<noise>-seed<seed>."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the interrupted run in --run-dir."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the run in --run-dir (only once the new run has started)."
    ),
) -> None:
    """Train a segmentation network on noisy labels with one method (method.name; `mlbseg configs`).

    Methods: baseline, robust losses (gce, mae, nr_dice, tloss), selection and correction (coteaching,
    trinet, clslsr, adele, dast), meta-weighting (l2rw, l2b_seg, mlbseg) and the controls
    baseline_plus_meta and views_meta; the model is UNet++/U-Net from smp or the reference's NestedUNet
    (model.arch).
    """
    from mlbseg.config import load_config, resolve_config_path
    from mlbseg.seg.config import SegConfig, with_absolute_paths

    cfg = with_absolute_paths(load_config(SegConfig, resolve_config_path(config, "seg"), overrides))
    from mlbseg.seg.trainer import train as run_training

    folder = run_training(cfg, run_dir, resume=resume, overwrite=overwrite)
    typer.echo(f"finished: {folder}")
