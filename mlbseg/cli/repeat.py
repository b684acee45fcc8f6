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
    jobs: int = typer.Option(
        1, "--jobs", min=1, help="Runs at a time, each its own process (--launcher process; default 1)."
    ),
    per_gpu: int | None = typer.Option(
        None,
        "--per-gpu",
        min=1,
        help="Runs per GPU at a time (--launcher process); default ⌈jobs / GPUs⌉. Ignored without GPUs.",
    ),
    launcher: str = typer.Option(
        "process",
        "--launcher",
        help="process: local worker processes (default); submitit: one job per run in one Slurm job array "
        "(without Slurm: local processes, all at once, and the command waits).",
    ),
    wait: bool = typer.Option(
        False, "--wait", help="submitit on Slurm: wait for every job, then write the table (default: return)."
    ),
    slurm_partition: str | None = typer.Option(
        None, "--slurm-partition", help="submitit: Slurm partition; default: the cluster's default."
    ),
    slurm_gpus_per_run: int | None = typer.Option(
        None, "--slurm-gpus-per-run", min=0, help="submitit: GPUs per job (default 1); 4 CPU cores per GPU."
    ),
    slurm_time: int | None = typer.Option(
        None,
        "--slurm-time",
        min=1,
        help="submitit: time limit per job in minutes (default 240); a job at its limit is requeued and "
        "resumes from last.pt.",
    ),
    slurm_array_parallelism: int | None = typer.Option(
        None,
        "--slurm-array-parallelism",
        min=1,
        help="submitit: jobs of the array running at once; default: submitit's 256.",
    ),
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
    mean ± sample std over seeds of each run's mean test Dice (%) and HD95 (mm); for segmentation also
    OUT/cases.csv (every run's per-case results) and OUT/stats.md, stats.json (every method against baseline
    and views_meta: paired mean difference, 95% bootstrap CI, Wilcoxon-Holm p). Exits 1 if a run failed.
    Ctrl-C or SIGTERM stops every run's process (exit 130/143); the same command then continues. A run
    that another process is still training (its RUN_DIR/.lock is held) stops the command before it starts.

    --launcher submitit submits every pending run as one job of a job array (OUT/.submitit, job ids in
    OUT/.submitit/jobs.json). On Slurm the command returns after submitting (unless --wait); the same
    command again reports the runs still queued or running, submits nothing twice, and writes the table
    once every job has ended. Without Slurm the jobs are this command's child processes: it always waits,
    and Ctrl-C or SIGTERM cancels them.
    """
    from rich.console import Console

    from mlbseg.config import resolve_config_path
    from mlbseg.errors import UserError
    from mlbseg.repeat import parse_list, parse_seeds
    from mlbseg.repeat import repeat as run_repeat
    from mlbseg.repeat.slurm import ClusterOptions
    from mlbseg.repeat.table import rich_table

    console = Console()
    slurm_options = {
        "--slurm-partition": slurm_partition,
        "--slurm-gpus-per-run": slurm_gpus_per_run,
        "--slurm-time": slurm_time,
        "--slurm-array-parallelism": slurm_array_parallelism,
    }
    if launcher not in ("process", "submitit"):
        raise UserError(f"--launcher: unknown launcher {launcher!r}; choose process or submitit")
    cluster = None
    if launcher == "submitit":
        cluster = ClusterOptions(
            partition=slurm_partition,
            gpus_per_run=1 if slurm_gpus_per_run is None else slurm_gpus_per_run,
            time_min=240 if slurm_time is None else slurm_time,
            array_parallelism=slurm_array_parallelism,
            wait=wait,
        )
    else:
        given = [option for option, value in slurm_options.items() if value is not None]
        if given:
            raise UserError(f"{given[0]}: only with --launcher submitit")
    path = resolve_config_path(config, task if task in ("seg", "cls") else None)
    result = run_repeat(
        path,
        seeds=parse_seeds(seeds),
        noises=parse_list(noise, "--noise"),
        methods=parse_list(methods, "--methods"),
        overrides=overrides,
        out=out,
        jobs=jobs,
        per_gpu=per_gpu,
        task=task,
        cluster=cluster,
        console=console,
    )
    if result.pending:
        ids = ", ".join(f"{name} ({job})" for name, job in result.pending.items())
        typer.echo(f"{len(result.pending)} run(s) queued or running: {ids}")
        typer.echo("no table yet; run the same command again once they are done (or add --wait)")
        return
    console.print(rich_table(result.task, result.rows, f"{path.name}: mean ± std over seeds"))
    typer.echo(f"wrote {', '.join(str(path) for path in result.tables)}")
    if result.failed:
        typer.echo(
            f"{len(result.failed)} run(s) failed; see their log.txt (listed in {result.tables[0]})", err=True
        )
        raise typer.Exit(1)
