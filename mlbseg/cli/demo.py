"""``mlbseg demo``: phantoms → prepared data → baseline, views_meta, MLB-Seg → evaluation, figures, tables."""

from __future__ import annotations

from pathlib import Path

import typer

from mlbseg.cli.data import CORES


def demo(
    out: Path = typer.Option(Path("demo"), "--out", help="Demo folder (created, continued, or --overwrite)."),
    seeds: list[str] = typer.Option(
        ["0"], "--seeds", help="Training seeds: 0, a range 0..2 or a list 0,1,2; one run per method each."
    ),
    cases: int = typer.Option(24, "--cases", min=3, help="Phantom cases (2/3 train, 1/12 meta, 1/4 test)."),
    size: int = typer.Option(48, "--size", min=16, help="Prepared slice size in pixels."),
    zones: bool = typer.Option(
        False, "--zones", help="Three classes: phantoms with a peripheral and a transition zone, T2 + ADC."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a training key of every run, e.g. --set train.device=cuda (repeatable)."
    ),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        min=1,
        show_default=False,
        help="Worker processes for synth and prepare; default: the usable CPU cores, at most 4.",
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Start afresh; an earlier demo in OUT is kept until the new one is complete, then replaced.",
    ),
) -> None:
    """The whole path on built-in phantoms: the baseline, views_meta and MLB-Seg at L1 noise, compared.

    views_meta is MLB-Seg with uniform weights (its views, consistency, EMA teacher and meta-batch step),
    so MLB-Seg minus views_meta is the meta-weighting's own share. Writes OUT/figures/ (Figure-5 overlays,
    the methods on a test case, per-case Dice, α/β maps, curves), OUT/table.md, table.csv, table.json
    (test Dice and HD95, mean ± std over the seeds, as `mlbseg repeat`), OUT/cases.csv and OUT/stats.md,
    stats.json (paired differences against the baseline and views_meta). A rerun continues where an
    interrupted one (Ctrl-C, SIGTERM) stopped. Minutes on a CPU (docs/performance.md).
    """
    from mlbseg.demo import DemoData, run_demo
    from mlbseg.repeat import parse_seeds

    result = run_demo(
        out,
        seeds=parse_seeds(seeds),
        data=DemoData(cases=cases, size=size, zones=zones),
        overrides=overrides,
        overwrite=overwrite,
        jobs=min(CORES, 4) if jobs is None else jobs,
    )
    typer.echo(f"wrote {', '.join(str(path) for path in result.figures)}")
