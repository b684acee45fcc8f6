"""``benchmarks/gpu_check.py``: the dry run exercises every step on the CPU; the budget stops it cleanly.

The GPU check gets one call on a GPU machine, so its every step must be known to work before: the dry run
here runs all of them at toy size (phantoms, the trainer's workers, the precision comparison, two runs at
once) and writes its section to a temporary file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
STEPS = ["gpu_tests", "train_grid", "precision", "packing", "methods"]

sys.path.insert(0, str(SCRIPT.parent))
import gpu_check  # noqa: E402  (a script, not a package)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}/status").is_file() and "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    )


def test_dry_run_runs_every_step_and_writes_its_section(tmp_path):
    out = tmp_path / "performance.md"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), "--budget-s", "400"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["dry_run"] is True
    assert sorted(record["status"]) == sorted(STEPS)
    assert all(state.startswith("ran in") for state in record["status"].values()), record["status"]
    assert record["gpu_tests"]["exit_code"] == 0
    assert record["gpu_tests"]["skipped"] >= 1  # no CUDA here: every gpu test skips, none fails
    cells = record["train_grid"]["cells"]
    assert set(cells) == {cell.label for cell in gpu_check.DRY.grid}
    assert all(cell["seconds_per_epoch"] > 0 and cell["device"] == "cpu" for cell in cells.values())
    assert record["train_grid"]["ratios"]["forward_over_lookahead_bf16"] > 0
    # No bf16 on the CPU: both runs take the same fp32 steps, so their weights agree exactly.
    precision = record["precision"]
    assert precision["bf16_active"] is False
    assert precision["alpha_relative_l1"] == 0.0
    assert precision["beta_relative_l1"] == 0.0
    (packed,) = record["packing"].values()
    assert packed["runs_per_gpu"] == 2
    assert packed["runs_per_hour"] > 0
    methods = record["methods"]
    assert list(methods["seconds_per_step"]) == ["baseline", "dast"]
    assert methods["x_baseline"]["baseline"] == 1.0 < methods["x_baseline"]["dast"]  # two networks
    text = out.read_text()
    assert text.count("<!-- bench:gpu_check -->") == 1
    assert "Training grid" in text
    assert "Several runs per GPU" in text
    assert "Segmentation methods on cpu" in text
    assert "--dry-run" in text


def test_a_child_that_outlives_the_budget_is_killed_with_its_session(monkeypatch):
    budget = gpu_check.Budget(gpu_check.RESERVE_S + 1.0)  # one second left
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    pids = []
    original = subprocess.Popen

    def recording_popen(*args, **kwargs):
        process = original(*args, **kwargs)
        pids.append(process.pid)
        return process

    monkeypatch.setattr(gpu_check.subprocess, "Popen", recording_popen)
    started = time.monotonic()
    with pytest.raises(gpu_check.BudgetExhaustedError):
        gpu_check.run_processes([sleeper, sleeper], budget)
    assert time.monotonic() - started < 10
    assert len(pids) == 2
    assert not any(_alive(pid) for pid in pids)


def test_steps_that_no_longer_fit_the_budget_are_listed_as_skipped(tmp_path):
    budget = gpu_check.Budget(gpu_check.RESERVE_S + 0.5)
    time.sleep(0.6)  # spent before the first step
    results, status = gpu_check.run_steps(gpu_check.DRY, budget, tmp_path)
    assert list(status) == STEPS
    assert all(state == "skipped: out of budget" for state in status.values())
    assert list(results) == ["environment"]
    body = gpu_check.render(results, status, gpu_check.DRY)
    assert "skipped: out of budget" in body


def test_without_cuda_only_the_dry_run_runs(capsys):
    assert gpu_check.main([]) == 2
    assert "--dry-run" in capsys.readouterr().err


def test_a_failing_command_names_its_error():
    failing = [sys.executable, "-c", "import sys; sys.exit('Error: no such prepared folder')"]
    with pytest.raises(RuntimeError, match="Error: no such prepared folder"):
        gpu_check.run_processes([failing], gpu_check.Budget(60))
