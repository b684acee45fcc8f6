"""``mlbseg configs``: the configs shipped with the package, by name, with their one-line summary."""

from __future__ import annotations

import shutil
import sys

import typer


def configs() -> None:
    """List the shipped configs; pass a name to `mlbseg train`, `classify train` or `repeat`.

    A name is unique within its task (train: seg, classify train: cls); `repeat` also takes TASK/NAME,
    e.g. cls/smoke. A path to a YAML file that exists always wins over a shipped name.
    """
    from mlbseg.config import shipped_configs

    found = shipped_configs()
    width = max((len(item.name) for item in found), default=0)
    columns = shutil.get_terminal_size().columns if sys.stdout.isatty() else None  # a pipe gets it all
    for item in found:
        line = f"{item.name:<{width}}  {item.task}  {item.summary}".rstrip()
        if columns is not None and len(line) > columns:
            line = line[: columns - 1] + "…"
        typer.echo(line)
