"""A repeat's per-case results: cases.csv from the runs' summaries, stats.json/md recomputed with scipy."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mlbseg.repeat.cases import write_case_results
from mlbseg.repeat.table import FAILED, FINISHED, RunRecord

CASES = ["Case01", "Case02", "Case03", "Case04", "Case05", "Case06"]
SHIFT = {"baseline": 0.0, "views_meta": 0.02, "mlbseg": 0.05}


def _dice(method: str, seed: int, index: int) -> float:
    return 0.6 + 0.03 * index + SHIFT[method] + 0.01 * np.sin(7 * seed + index + len(method))


def _write_repeat(out: Path, classes: bool = False) -> list[RunRecord]:
    records = []
    for method in SHIFT:
        for seed in (0, 1):
            name = f"{method}-L1-seed{seed}"
            cases = {}
            for index, case in enumerate(CASES):
                dice = _dice(method, seed, index)
                cases[case] = {
                    "dice": dice,
                    "hd95": None if index == 0 and method == "baseline" else 5 - dice,
                }
                if classes:
                    cases[case]["classes"] = {
                        "PZ": {"dice": dice - 0.1, "hd95": 6.0},
                        "TZ": {"dice": dice + 0.1, "hd95": 4.0},
                    }
            (out / name).mkdir(parents=True)
            (out / name / "summary.json").write_text(json.dumps({"cases": cases}))
            records.append(RunRecord(method, "L1", seed, name, FINISHED, {}, out / name / "log.txt"))
    failed = out / "mlbseg-L1-seed2"
    failed.mkdir()
    (failed / "summary.json").write_text(json.dumps({"cases": {"Case01": {"dice": 0.0, "hd95": 9.0}}}))
    records.append(RunRecord("mlbseg", "L1", 2, failed.name, FAILED, {}, failed / "log.txt"))
    return records


def test_cases_csv_has_a_row_per_run_and_case_of_the_runs_that_did_not_fail(tmp_path):
    paths = write_case_results(tmp_path, _write_repeat(tmp_path, classes=True))
    assert [path.name for path in paths] == ["cases.csv", "stats.json", "stats.md"]
    with (tmp_path / "cases.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 3 * 2 * len(CASES)  # the failed run's summary is not a result
    assert list(rows[0]) == [
        "method",
        "noise",
        "seed",
        "case",
        "dice",
        "hd95",
        "dice_PZ",
        "hd95_PZ",
        "dice_TZ",
        "hd95_TZ",
    ]
    first = rows[0]
    assert (first["method"], first["seed"], first["case"], first["hd95"]) == ("baseline", "0", "Case01", "")
    assert float(first["dice"]) == pytest.approx(_dice("baseline", 0, 0))


def test_stats_recomputed_with_scipy(tmp_path):
    write_case_results(tmp_path, _write_repeat(tmp_path))
    document = json.loads((tmp_path / "stats.json").read_text())
    dice = {(c["method"], c["reference"]): c for c in document["comparisons"]["dice"]}
    assert set(dice) == {
        ("views_meta", "baseline"),
        ("mlbseg", "baseline"),
        ("baseline", "views_meta"),
        ("mlbseg", "views_meta"),
    }
    differences = {
        method: np.array(
            [_dice(method, s, i) - _dice("baseline", s, i) for s in (0, 1) for i in range(len(CASES))]
        )
        for method in ("views_meta", "mlbseg")
    }
    p = {method: stats.wilcoxon(d).pvalue for method, d in differences.items()}
    low, high = sorted(p, key=p.get)
    holm = {low: min(1, 2 * p[low])}
    holm[high] = max(holm[low], min(1, p[high]))
    for method, d in differences.items():
        entry = dice[(method, "baseline")]
        assert entry["pairs"] == 12
        assert entry["mean_difference"] == pytest.approx(d.mean())
        assert entry["ci_low"] < d.mean() < entry["ci_high"]
        assert entry["p_value"] == pytest.approx(p[method])
        assert entry["p_holm"] == pytest.approx(holm[method])
    hd95 = {(c["method"], c["reference"]): c for c in document["comparisons"]["hd95"]}
    assert hd95[("mlbseg", "baseline")]["pairs"] == 10  # Case01 of the baseline has no finite HD95
    text = (tmp_path / "stats.md").read_text()
    assert "## Dice against baseline" in text
    assert "## HD95 against views_meta" in text
    assert f"| mlbseg | L1 | 12 | {100 * differences['mlbseg'].mean():+.2f} |" in text


def test_nothing_is_written_without_per_case_results(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"accuracy": 0.9}))  # a classification run
    record = RunRecord("l2b", "0.4", 0, "run", FINISHED, {}, tmp_path / "run" / "log.txt")
    assert write_case_results(tmp_path, [record]) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
