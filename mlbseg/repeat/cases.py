"""Per-case results of a segmentation repeat: ``cases.csv`` and the paired statistics ``stats.{md,json}``.

``cases.csv`` has one row per (method, noise, seed, test case) of every run with a final summary: Dice and
HD95 (the mean over foreground classes) and, for K > 2 labels, ``dice_<label>`` / ``hd95_<label>`` per
class. An empty cell is a value JSON could not hold (HD95 of an empty prediction, which is infinite).

``stats.json`` / ``stats.md`` compare every method with each reference present (``baseline``, and
``views_meta``, the control that has MLB-Seg's views and clean meta-batch step but no meta-weighting) on
paired (seed, case) values, per noise level (:mod:`mlbseg.repeat.stats`): the mean difference with its 95%
bootstrap confidence interval and the Wilcoxon signed-rank p-value, Holm-corrected across the methods
compared with the same reference at the same noise level. docs/evaluation.md §4 describes the protocol.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlbseg.engine.atomic import write_text_atomic
from mlbseg.repeat.stats import Comparison, compare_methods
from mlbseg.repeat.table import FAILED, RunRecord

REFERENCES = ("baseline", "views_meta")
METRICS = {"dice": ("Dice", 100.0, "pp"), "hd95": ("HD95", 1.0, "mm")}  # key -> name, scale, unit
SUMMARY = "summary.json"


def case_rows(out: Path, records: Sequence[RunRecord]) -> list[dict[str, Any]]:
    """One row per (run, test case) of the records that did not fail, from ``OUT/<run>/summary.json``."""
    rows = []
    for record in records:
        if record.status == FAILED:
            continue
        try:
            cases = json.loads((out / record.name / SUMMARY).read_text(encoding="utf-8"))["cases"]
        except (OSError, ValueError, KeyError):
            continue  # no per-case results (the table lists the run as it is)
        for case, values in cases.items():
            row = {"method": record.method, "noise": record.noise, "seed": record.seed, "case": case}
            row.update({key: values.get(key) for key in METRICS})
            for label, per_class in values.get("classes", {}).items():
                row.update({f"{key}_{label}": per_class.get(key) for key in METRICS})
            rows.append(row)
    return rows


def cases_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``cases.csv``: the rows with every column any row has (empty cells for null)."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    stream = io.StringIO()
    writer = csv.DictWriter(stream, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
    return stream.getvalue()


def comparisons(rows: Sequence[dict[str, Any]], metric: str, *, seed: int = 0) -> list[Comparison]:
    """Paired comparisons of every method with each reference on ``metric`` (null values are infinite)."""
    values = {
        (row["method"], row["noise"], row["seed"], row["case"]): math.inf
        if row[metric] is None
        else row[metric]
        for row in rows
    }
    return compare_methods(values, REFERENCES, metric=metric, seed=seed)


def stats_markdown(results: dict[str, list[Comparison]]) -> str:
    """One table per metric and reference: difference (method − reference), CI, p-values."""
    lines = [
        "# Paired comparisons on the test cases",
        "",
        "Per noise level: mean difference (method − reference) over (seed, case) pairs, its 95% percentile "
        "bootstrap confidence interval, and the two-sided Wilcoxon signed-rank p-value, Holm-corrected "
        "across the methods compared with the same reference at that noise level.",
    ]
    for metric, found in results.items():
        name, scale, unit = METRICS[metric]
        for reference in REFERENCES:
            chosen = [c for c in found if c.reference == reference]
            if not chosen:
                continue
            lines += [
                "",
                f"## {name} against {reference}",
                "",
                f"| method | noise | pairs | Δ {name} ({unit}) | 95% CI | p | p (Holm) |",
                "|---|---|---|---|---|---|---|",
            ]
            lines += [
                f"| {c.method} | {c.noise} | {c.pairs} | {scale * c.mean_difference:+.2f} | "
                f"[{scale * c.ci_low:+.2f}, {scale * c.ci_high:+.2f}] | {c.p_value:.3g} | {c.p_holm:.3g} |"
                for c in chosen
            ]
    return "\n".join(lines) + "\n"


def write_case_results(out: Path, records: Sequence[RunRecord]) -> list[Path]:
    """Write ``cases.csv``, ``stats.json`` and ``stats.md`` into ``out``; nothing without per-case results.

    Returns:
        The paths written.
    """
    rows = case_rows(out, records)
    if not rows:
        return []
    results = {metric: comparisons(rows, metric) for metric in METRICS}
    document = {
        "references": list(REFERENCES),
        "confidence": 0.95,
        "comparisons": {metric: [dataclasses.asdict(c) for c in found] for metric, found in results.items()},
    }
    texts = {
        "cases.csv": cases_csv(rows),
        "stats.json": json.dumps(document, indent=2, allow_nan=False) + "\n",
        "stats.md": stats_markdown(results),
    }
    paths = []
    for name, text in texts.items():
        write_text_atomic(out / name, text)
        paths.append(out / name)
    return paths
