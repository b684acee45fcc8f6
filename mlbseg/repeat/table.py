"""The repeat's result table (the paper's Table 8): mean ± std over seeds per (method, noise).

The protocol is docs/evaluation.md §4.

Each run contributes one number per metric: the mean over its test volumes from its ``summary.json``
(segmentation: Dice, in %, and HD95 in mm; classification: accuracy in %). Per (method, noise) the table
gives the mean over the finished seeds and their **sample** standard deviation (ddof = 1, empty for a single
seed). A run whose HD95 is undefined (no finite HD95 on any test volume) is left out of that metric's mean
and counted in ``<metric>_n``. Failed runs are listed with their log files. Written as ``table.md``,
``table.csv`` and ``table.json`` (which also lists every run), each atomically.

Segmentation with K > 2 labels: the task's metrics (Dice, HD95) are the mean over foreground classes, and
each class adds the columns ``<metric>_<label name>`` (values ``dice_PZ``… of the run, see
:func:`mlbseg.repeat.tasks.get_task`), shown as ``PZ Dice (%)``; a row lists its classes under ``classes``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlbseg.engine.atomic import write_text_atomic
from mlbseg.repeat.tasks import Metric, RepeatTask

STD_NOTE = "std = sample standard deviation over seeds (ddof = 1); per-run value = mean over test volumes"
FINISHED, SKIPPED, FAILED = "finished", "skipped", "failed"


@dataclass(frozen=True)
class RunRecord:
    """One run's result: ``status`` is finished (now), skipped (earlier) or failed; ``values`` raw."""

    method: str
    noise: str
    seed: int
    name: str
    status: str
    values: dict[str, float | None]
    log: Path
    seconds: float | None = None


def class_names(task: RepeatTask, records: Sequence[RunRecord]) -> list[str]:
    """Label names of the per-class values (``<metric key>_<name>``) of the records, in first-seen order."""
    prefixes = [f"{metric.key}_" for metric in task.metrics]
    return list(
        dict.fromkeys(
            key[len(prefix) :]
            for record in records
            for key in record.values
            for prefix in prefixes
            if key.startswith(prefix)
        )
    )


def table_metrics(task: RepeatTask, rows: Sequence[dict[str, Any]]) -> list[Metric]:
    """The task's metrics, then those of each class in the rows' ``classes`` (``PZ Dice (%)``, …)."""
    names = list(dict.fromkeys(name for row in rows for name in row.get("classes", [])))
    per_class = [
        Metric(f"{metric.key}_{name}", f"{name} {metric.label}", metric.scale)
        for name in names
        for metric in task.metrics
    ]
    return [*task.metrics, *per_class]


def aggregate(task: RepeatTask, records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per (method, noise), in order of first appearance, with mean/std/n of every metric.

    Runs with per-class values (K > 2 labels) add their classes' metrics and a ``classes`` list.
    """
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for record in records:
        groups.setdefault((record.method, record.noise), []).append(record)
    rows = []
    for (method, noise), members in groups.items():
        done = [record for record in members if record.status != FAILED]
        row: dict[str, Any] = {"method": method, "noise": noise, "n": len(done)}
        classes = class_names(task, done)
        if classes:
            row["classes"] = classes
        for metric in table_metrics(task, [row]):
            values = [record.values.get(metric.key) for record in done]
            scaled = [value * metric.scale for value in values if value is not None and math.isfinite(value)]
            row[f"{metric.key}_mean"] = statistics.fmean(scaled) if scaled else None
            row[f"{metric.key}_std"] = statistics.stdev(scaled) if len(scaled) > 1 else None
            row[f"{metric.key}_n"] = len(scaled)
        failed = [record for record in members if record.status == FAILED]
        row["failed"] = len(failed)
        row["failed_logs"] = [str(record.log) for record in failed]
        rows.append(row)
    return rows


def cell(row: dict[str, Any], metric: Metric) -> str:
    """``mean ± std`` with two decimals; ``-`` when no run has the metric; ``(k of n)`` when some lack it.

    Example:
        >>> cell({"n": 3, "dice_mean": 77.7, "dice_std": 0.314, "dice_n": 3}, Metric("dice", "Dice (%)", 100))
        '77.70 ± 0.31'
    """
    mean, std, count = row[f"{metric.key}_mean"], row[f"{metric.key}_std"], row[f"{metric.key}_n"]
    if mean is None:
        return "-"
    text = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    return text if count == row["n"] else f"{text} ({count} of {row['n']})"


def markdown(task: RepeatTask, rows: Sequence[dict[str, Any]], title: str) -> str:
    """The Markdown table, its note on std, and the failed runs with their logs."""
    metrics = table_metrics(task, rows)
    headers = ["Method", "Noise", "n", *(metric.label for metric in metrics), "Failed"]
    lines = [
        f"# {title}",
        "",
        f"{STD_NOTE}.",
        *_class_note(task, metrics),
        "",
        "| " + " | ".join(headers) + " |",
    ]
    lines.append("|" + "|".join(["---"] * 2 + ["--:"] * (len(headers) - 2)) + "|")
    for row in rows:
        cells = [row["method"], row["noise"], str(row["n"]), *(_cell(row, m) for m in metrics)]
        lines.append("| " + " | ".join([*cells, str(row["failed"])]) + " |")
    failed = [log for row in rows for log in row["failed_logs"]]
    if failed:
        lines += ["", "Failed runs (see their logs):", "", *(f"- `{log}`" for log in failed)]
    return "\n".join(lines) + "\n"


def _cell(row: dict[str, Any], metric: Metric) -> str:
    """:func:`cell`, or ``-`` for a class metric of a row that does not have that class."""
    return cell(row, metric) if f"{metric.key}_mean" in row else "-"


def _class_note(task: RepeatTask, metrics: Sequence[Metric]) -> list[str]:
    """The line saying that the task's metrics are class means, when there are per-class columns."""
    if len(metrics) == len(task.metrics):
        return []
    return ["", f"{', '.join(m.label for m in task.metrics)}: mean over the foreground classes of each run."]


def csv_text(task: RepeatTask, rows: Sequence[dict[str, Any]]) -> str:
    """CSV with one row per (method, noise); metric values in the table's units, full precision."""
    metrics = table_metrics(task, rows)
    stats = [f"{metric.key}_{part}" for metric in metrics for part in ("mean", "std", "n")]
    buffer = io.StringIO()
    fields = ["method", "noise", "n", *stats, "failed", "failed_logs"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")  # ignored: a row's classes
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "failed_logs": ";".join(row["failed_logs"])})
    return buffer.getvalue()


def write_tables(
    out: Path, task: RepeatTask, *, rows: Sequence[dict[str, Any]], records: Sequence[RunRecord], title: str
) -> list[Path]:
    """Write ``table.md``, ``table.csv`` and ``table.json`` into ``out``; return their paths."""
    document = {
        "title": title,
        "task": task.name,
        "std": STD_NOTE,
        "units": {metric.key: metric.label for metric in table_metrics(task, rows)},
        "rows": list(rows),
        "runs": [
            {
                "name": r.name,
                "method": r.method,
                "noise": r.noise,
                "seed": r.seed,
                "status": r.status,
                "values": r.values,
                "log": str(r.log),
                "seconds": r.seconds,
            }
            for r in records
        ],
    }
    texts = {
        "table.md": markdown(task, rows, title),
        "table.csv": csv_text(task, rows),
        "table.json": json.dumps(document, indent=2) + "\n",
    }
    paths = []
    for name, text in texts.items():
        path = out / name
        write_text_atomic(path, text)
        paths.append(path)
    return paths


def rich_table(task: RepeatTask, rows: Sequence[dict[str, Any]], title: str) -> Any:
    """The table for the terminal (a :class:`rich.table.Table`)."""
    from rich.table import Table

    metrics = table_metrics(task, rows)
    table = Table(title=title, caption=" ".join([STD_NOTE, *_class_note(task, metrics)]).strip())
    for header in ("Method", "Noise", "n", *(metric.label for metric in metrics), "Failed"):
        table.add_column(header, justify="left" if header in ("Method", "Noise") else "right")
    for row in rows:
        cells = [row["method"], row["noise"], str(row["n"]), *(_cell(row, m) for m in metrics)]
        table.add_row(*cells, str(row["failed"]) if not row["failed"] else f"[red]{row['failed']}[/red]")
    return table
