"""``mlbseg repeat``: independent seeded runs per method and noise level, then a Table-8 summary.

The protocol is docs/evaluation.md §4, the processes docs/design.md §8.
"""

from __future__ import annotations

from pathlib import Path

import typer


def repeat(
    config: Path = typer.Argument(
        ..., help="Run config: a YAML file or a shipped name (`mlbseg configs`), e.g. promise12_mlbseg."
    ),
    seeds: list[str] = typer.Option(
        ["0..4"], "--seeds", help="Seeds: a range 0..4, a list 0,1,2, or repeated: --seeds 3 --seeds 7."
    ),
    noise: list[str] = typer.Option(
        [],
        "--noise",
        help="Noise levels, e.g. L1,L2,L3 (classification: rates 0.2,0.4); default: the config's.",
    ),
    methods: list[str] = typer.Option(
        [], "--methods", help="Methods, e.g. baseline,mlbseg (comma list or repeated); default: the config's."
    ),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Runs at a time, as separate processes (≤ 1 per GPU)."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder of the runs and tables; default runs/<name>-repeat."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override one key in every run, e.g. --set train.epochs=50 (repeatable)."
    ),
    task: str = typer.Option("auto", "--task", help="auto, seg or cls (auto: from the config)."),
) -> None:
    """Train and evaluate every (method, noise, seed); skip finished runs, resume interrupted ones.

    Writes OUT/<method>-<noise>-seed<k>/ (with log.txt) per run and OUT/table.md, table.csv, table.json:
    mean ± sample std over seeds of each run's mean test Dice (%) and HD95 (mm). Exits 1 if a run failed.
    Ctrl-C or SIGTERM stops every run's process (exit 130/143); the same command then continues. A run
    that another process is still training (its RUN_DIR/.lock is held) stops the command before it starts.
    """
    from rich.console import Console

    from mlbseg.config import resolve_config_path
    from mlbseg.repeat import parse_list, parse_seeds
    from mlbseg.repeat import repeat as run_repeat
    from mlbseg.repeat.table import rich_table

    console = Console()
    path = resolve_config_path(config, task if task in ("seg", "cls") else None)
    result = run_repeat(
        path,
        seeds=parse_seeds(seeds),
        noises=parse_list(noise, "--noise"),
        methods=parse_list(methods, "--methods"),
        overrides=overrides,
        out=out,
        jobs=jobs,
        task=task,
        console=console,
    )
    console.print(rich_table(result.task, result.rows, f"{path.name}: mean ± std over seeds"))
    typer.echo(f"wrote {', '.join(str(path) for path in result.tables)}")
    if result.failed:
        typer.echo(
            f"{len(result.failed)} run(s) failed; see their log.txt (listed in {result.tables[0]})", err=True
        )
        raise typer.Exit(1)
