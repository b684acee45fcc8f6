"""`mlbseg repeat` end to end: workers, tables, skip and resume, failures, signals, locks, classification."""

import csv
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from mlbseg.cli._errors import reports_user_errors
from mlbseg.cli.repeat import repeat
from mlbseg.engine.lock import run_lock

from .processes import alive, children

ROOT = Path(__file__).parents[2]
SMOKE = ROOT / "mlbseg" / "configs" / "seg" / "smoke.yaml"
CLS_SMOKE = ROOT / "mlbseg" / "configs" / "cls" / "smoke.yaml"
runner = CliRunner()

app = typer.Typer(pretty_exceptions_enable=False)
app.command("repeat")(reports_user_errors(repeat))
app.command("unused")(lambda: None)  # a second command keeps `repeat` a named subcommand


@pytest.fixture(scope="module")
def prepared(phantoms):
    return phantoms[1]


def _repeat(out, *args):
    return runner.invoke(app, ["repeat", *(str(arg) for arg in args), "--out", str(out)])


def _table(out):
    return json.loads((out / "table.json").read_text())


def _dice(run_dir):
    return json.loads((run_dir / "summary.json").read_text())["mean"]["dice"]["mean"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--methods", "baseline,mlbsek"], "--methods: unknown method 'mlbsek'"),
        (["--noise", "L1,L/9"], "--noise: 'L/9' is neither a noise level"),
        (["--seeds", "4..1"], "--seeds: empty range"),
        (["--set", "train.seed=1"], "use --seeds instead"),
        (["--set", "train.epoch=1"], "did you mean 'train.epochs'"),
        (["--set", "data.prepared=/nonexistent/prepared"], "/nonexistent/prepared: no such folder"),
        (["--task", "segment"], "--task: unknown task"),
    ],
)
def test_bad_input_stops_before_anything_starts(tmp_path, args, message):
    out = tmp_path / "out"
    result = _repeat(out, SMOKE, "--seeds", "0..1", *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.slow
def test_repeat_writes_the_table_then_skips_and_resumes(prepared, tmp_path):
    out = tmp_path / "out"
    args = [
        SMOKE,
        "--seeds",
        "0..1",
        "--noise",
        "L1",
        "--methods",
        "baseline",
        "--set",
        f"data.prepared={prepared}",
    ]
    result = _repeat(out, *args, "--jobs", "2")
    assert result.exit_code == 0, result.output
    runs = [out / "baseline-L1-seed0", out / "baseline-L1-seed1"]
    dice = [100 * _dice(run) for run in runs]
    (row,) = _table(out)["rows"]
    assert (row["method"], row["noise"], row["n"], row["failed"]) == ("baseline", "L1", 2, 0)
    assert row["dice_mean"] == pytest.approx(statistics.fmean(dice))
    assert row["dice_std"] == pytest.approx(statistics.stdev(dice))
    (csv_row,) = csv.DictReader((out / "table.csv").open())
    assert float(csv_row["dice_mean"]) == pytest.approx(row["dice_mean"])
    assert (
        f"| baseline | L1 | 2 | {row['dice_mean']:.2f} ± {row['dice_std']:.2f} |"
        in (out / "table.md").read_text()
    )
    for run in runs:
        assert "mlbseg repeat: fresh" in (run / "log.txt").read_text()

    finals = {run: (run / "checkpoints" / "final.pt").stat().st_mtime_ns for run in runs}
    again = _repeat(out, *args)
    assert again.exit_code == 0, again.output
    assert again.output.count("skipped baseline-L1-seed") == 2
    assert {run: (run / "checkpoints" / "final.pt").stat().st_mtime_ns for run in runs} == finals

    interrupted = runs[1]
    (interrupted / "checkpoints" / "final.pt").unlink()
    (interrupted / "summary.json").unlink()
    resumed = _repeat(out, *args)
    assert resumed.exit_code == 0, resumed.output
    assert "started baseline-L1-seed1 (resume)" in resumed.output
    assert "--resume" in (interrupted / "log.txt").read_text()
    assert 100 * _dice(interrupted) == pytest.approx(dice[1])
    assert _table(out)["rows"][0]["n"] == 2


@pytest.mark.slow
def test_a_failed_run_is_reported_and_retried(prepared, tmp_path):
    out = tmp_path / "out"
    args = [SMOKE, "--seeds", "0", "--noise", "L1", "--methods", "baseline,mlbseg"]
    args += ["--set", f"data.prepared={prepared}", "--set", "method.views.zoom_pads=[4,20]", "--jobs", "2"]
    result = _repeat(out, *args)
    assert result.exit_code == 1, result.output
    log = out / "mlbseg-L1-seed0" / "log.txt"
    assert "Error: method.views.zoom_pads" in log.read_text()
    baseline, mlbseg = _table(out)["rows"]
    assert (baseline["n"], baseline["failed"]) == (1, 0)
    assert (mlbseg["n"], mlbseg["failed"], mlbseg["dice_mean"]) == (0, 1, None)
    assert mlbseg["failed_logs"] == [str(log)]
    assert f"`{log}`" in (out / "table.md").read_text()
    statuses = {run["name"]: run["status"] for run in _table(out)["runs"]}
    assert statuses == {"baseline-L1-seed0": "finished", "mlbseg-L1-seed0": "failed"}

    retried = _repeat(out, *args)
    assert retried.exit_code == 1
    assert "skipped baseline-L1-seed0" in retried.output
    assert log.read_text().count("mlbseg repeat: fresh") == 2  # the earlier attempt's log is kept


def _popen(module, *args):
    command = [sys.executable, "-m", module, *(str(arg) for arg in args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes side by side on two cores
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def _model(run_dir):
    return torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)["model"]


def _summary(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary["cases"], summary["mean"]


def _interrupt_in_training(victim, run_dir):
    """SIGTERM ``victim`` once its run has a ``last.pt``; return its workers' pids and its stderr."""
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.pt").exists():
        assert victim.poll() is None, victim.stderr.read().decode()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    workers = children(victim.pid)
    assert workers, "the run's worker process"
    victim.send_signal(signal.SIGTERM)  # in the run's second epoch
    _, stderr = victim.communicate(timeout=60)
    return workers, stderr.decode()


def test_sigterm_stops_the_workers_and_the_rerun_ends_as_an_uninterrupted_run(
    prepared, tmp_path, monkeypatch
):
    sets = [f"data.prepared={prepared}", "train.epochs=3", "train.device=cpu"]
    sets = [item for override in sets for item in ("--set", override)]
    axes = ["--set", "train.seed=0", "--set", "method.name=baseline", "--set", "data.noise=L1"]
    reference_dir = tmp_path / "reference"  # the same run, uninterrupted, as repeat's worker runs it
    worker = ["mlbseg.repeat.worker", "--task", "seg", "--config", SMOKE, "--run-dir", reference_dir]
    out, run_dir = tmp_path / "out", tmp_path / "out" / "baseline-L1-seed0"
    args = [SMOKE, "--seeds", "0", "--noise", "L1", "--methods", "baseline", "--jobs", "1", *sets]
    reference = _popen(*worker, *sets, *axes)
    victim = _popen("mlbseg", "repeat", *args, "--out", out)
    try:
        workers, stderr = _interrupt_in_training(victim, run_dir)
        assert victim.returncode == 143, stderr
        assert stderr == (
            "interrupted; continue with the same command (finished runs are kept, interrupted ones resume)\n"
        )
        assert not any(alive(pid) for pid in workers)
        assert not (run_dir / "checkpoints" / "final.pt").exists()
        assert sorted(path.name for path in out.iterdir()) == [".lock", run_dir.name]  # no pending log
        assert "interrupted by SIGTERM" in (run_dir / "log.txt").read_text()
        assert not list(run_dir.rglob("*.tmp"))

        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # bit-exact resume: the same threads as the reference
        resumed = _repeat(out, *args)
        assert resumed.exit_code == 0, resumed.output
        assert "started baseline-L1-seed0 (resume)" in resumed.output
        assert reference.wait(timeout=120) == 0, reference.stderr.read().decode()
    finally:
        for process in (victim, reference):
            process.kill()
            process.wait()
    expected, actual = _model(reference_dir), _model(run_dir)
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name
    assert _summary(run_dir) == _summary(reference_dir)
    (row,) = _table(out)["rows"]
    assert (row["n"], row["failed"]) == (1, 0)
    assert row["dice_mean"] == pytest.approx(100 * _summary(reference_dir)[1]["dice"]["mean"])
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]


def test_a_run_another_process_trains_stops_the_repeat_before_it_starts(prepared, tmp_path):
    out = tmp_path / "out"
    busy = out / "baseline-L1-seed1"
    with run_lock(busy):  # as an orphaned worker of an earlier, SIGKILLed repeat would hold it
        result = _repeat(
            out, SMOKE, "--seeds", "0..1", "--methods", "baseline", "--set", f"data.prepared={prepared}"
        )
    assert result.exit_code == 2, result.output
    assert result.output == (
        f"Error: {busy}: another process is training this run (lock held); wait for it or stop it\n"
    )
    assert sorted(path.name for path in out.iterdir()) == [busy.name]  # nothing started, no table


def _cifar_fakes():
    spec = importlib.util.spec_from_file_location(
        "_cls_fakes", ROOT / "tests" / "unit" / "cls" / "cls_fakes.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_repeat_drives_classification_configs(tmp_path):
    root = _cifar_fakes().write_cifar10(tmp_path / "cifar", per_batch=60, test_size=10)
    out = tmp_path / "out"
    result = _repeat(
        out,
        CLS_SMOKE,
        "--seeds",
        "0",
        "--noise",
        "0.4",
        "--methods",
        "baseline",
        "--set",
        f"data.root={root}",
    )
    assert result.exit_code == 0, result.output
    table = _table(out)
    assert table["task"] == "cls"
    (row,) = table["rows"]
    summary = json.loads((out / "baseline-0.4-seed0" / "summary.json").read_text())
    assert (row["noise"], row["n"]) == ("0.4", 1)
    assert row["accuracy_mean"] == pytest.approx(100 * summary["accuracy"])
    assert "Accuracy (%)" in (out / "table.md").read_text()
