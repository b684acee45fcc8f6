"""`mlbseg train` end to end on tiny phantoms: run folder contents, resume, and a real kill mid-run."""

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mlbseg.cli import app
from mlbseg.config import load_config
from mlbseg.seg.config import SegConfig

ROOT = Path(__file__).parents[2]
SMOKE = ROOT / "mlbseg" / "configs" / "seg" / "smoke.yaml"
runner = CliRunner()


@pytest.fixture(scope="module")
def prepared(phantoms):
    return phantoms[1]


def _train(prepared, run_dir, *extra):
    args = ["train", str(SMOKE), "--set", f"data.prepared={prepared}", "--run-dir", str(run_dir), *extra]
    return runner.invoke(app, args)


def test_smoke_run_writes_the_run_folder(prepared, tmp_path):
    run_dir = tmp_path / "run"
    result = _train(prepared, run_dir)
    assert result.exit_code == 0, result.output
    cfg = load_config(SegConfig, run_dir / "config.yaml")
    assert cfg.data.prepared == str(prepared)
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert (run_dir / "checkpoints" / "final.pt").is_file()
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    for row in rows:
        for key in ("loss", "meta_loss", "alpha_mean", "beta_mean", "meta_dice", "lr", "seconds"):
            assert float(row[key]) == float(row[key]), key  # present and not NaN
        assert 0.0 <= float(row["meta_dice"]) <= 1.0
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])
    assert any((run_dir / "tensorboard").iterdir())


@pytest.mark.slow
def test_existing_run_is_not_overwritten_and_resume_of_finished_run_is_a_no_op(prepared, tmp_path):
    run_dir = tmp_path / "run"
    assert _train(prepared, run_dir).exit_code == 0
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    again = _train(prepared, run_dir)
    assert again.exit_code == 2
    assert "use --resume" in again.output
    assert _train(prepared, run_dir, "--resume").exit_code == 0
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before
    changed = _train(prepared, run_dir, "--resume", "--set", "optim.lr=0.1")
    assert changed.exit_code == 2
    assert "optim.lr" in changed.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.noise=L7", "'data.noise' must be one of"),
        ("method.nam=mlbseg", "did you mean 'method.name'"),
        ("data.prepared=/nonexistent/prepared", "/nonexistent/prepared"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(prepared, tmp_path, override, message):
    result = _train(prepared, tmp_path / "run", "--set", override)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def _subprocess_train(prepared, run_dir, *extra):
    command = [sys.executable, "-m", "mlbseg", "train", str(SMOKE), "--set", f"data.prepared={prepared}"]
    command += ["--set", "train.epochs=3", "--set", "train.steps_per_epoch=3", "--run-dir", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runs side by side on two cores
    return subprocess.Popen([*command, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


@pytest.mark.slow
def test_resume_after_a_real_kill_matches_an_uninterrupted_run(prepared, tmp_path):
    reference = _subprocess_train(prepared, tmp_path / "reference")
    killed_dir = tmp_path / "killed"
    victim = _subprocess_train(prepared, killed_dir)
    last = killed_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert last.exists(), victim.stderr.read().decode()
    victim.send_signal(signal.SIGKILL)  # during the second epoch
    victim.wait()
    assert not (killed_dir / "checkpoints" / "final.pt").exists()
    resumed = _subprocess_train(prepared, killed_dir, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    assert reference.wait() == 0, reference.stderr.read().decode()
    expected = torch.load(tmp_path / "reference" / "checkpoints" / "final.pt", weights_only=False)["model"]
    actual = torch.load(killed_dir / "checkpoints" / "final.pt", weights_only=False)["model"]
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name
    rows = list(csv.DictReader((killed_dir / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]


def test_unknown_normalizer_and_bad_zoom_pads_fail_before_training(prepared, tmp_path):
    result = _train(prepared, tmp_path / "a", "--set", "method.normalize=softmx")
    assert result.exit_code == 2
    assert "method.normalize" in result.output
    result = _train(prepared, tmp_path / "b", "--set", "method.views.zoom_pads=[4, 20]")
    assert result.exit_code == 2
    assert "method.views.zoom_pads" in result.output
    assert not (tmp_path / "b" / "checkpoints" / "last.pt").exists()


@pytest.mark.slow
def test_foreground_oversampling_trains_and_rejects_a_bad_share(prepared, tmp_path):
    result = _train(prepared, tmp_path / "a", "--set", "data.foreground_fraction=0.5")
    assert result.exit_code == 0, result.output
    result = _train(prepared, tmp_path / "b", "--set", "data.foreground_fraction=1.5")
    assert result.exit_code == 2
    assert "data.foreground_fraction" in result.output
