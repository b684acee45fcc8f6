"""`mlbseg classify train/evaluate` end to end on a tiny CIFAR-10-format set: run folder, resume, kill."""

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mlbseg.cli.classify import app
from mlbseg.cls.config import ClsConfig, dataset_kwargs
from mlbseg.cls.datasets import build_datasets
from mlbseg.config import load_config

ROOT = Path(__file__).parents[2]
SMOKE = ROOT / "mlbseg" / "configs" / "cls" / "smoke.yaml"
runner = CliRunner()


def _fakes():
    spec = importlib.util.spec_from_file_location(
        "_cls_fakes", ROOT / "tests" / "unit" / "cls" / "cls_fakes.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return _fakes().write_cifar10(tmp_path_factory.mktemp("cifar"), per_batch=60, test_size=10)


def _train(root, run_dir, *extra):
    return runner.invoke(
        app, ["train", str(SMOKE), "--set", f"data.root={root}", "--run-dir", str(run_dir), *extra]
    )


def _rows(run_dir):
    return list(csv.DictReader((run_dir / "metrics.csv").open()))


def test_smoke_run_then_evaluate(cifar_root, tmp_path):
    run_dir = tmp_path / "run"
    result = _train(cifar_root, run_dir)
    assert result.exit_code == 0, result.output
    cfg = load_config(ClsConfig, run_dir / "config.yaml")
    assert cfg.data.root == str(cifar_root)
    for name in ("checkpoints/last.pt", "checkpoints/final.pt", "noisy_labels.npy", "data.json"):
        assert (run_dir / name).is_file(), name
    rows = _rows(run_dir)
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert rows[0]["beta_share"] == ""  # epoch 1 is the plain-CE warm-up
    assert 0.0 <= float(rows[1]["beta_share"]) <= 1.0
    for row in rows:
        assert 0.0 <= float(row["test_acc"]) <= 1.0
        assert np.isfinite(float(row["loss"]))
    assert float(rows[1]["lr"]) < float(rows[0]["lr"])
    data = build_datasets("cifar10", cifar_root, **dataset_kwargs(cfg))
    np.testing.assert_array_equal(np.load(run_dir / "noisy_labels.npy"), data.noisy_labels)
    assert json.loads((run_dir / "data.json").read_text())["noise_rate"] == pytest.approx(data.noise_rate)
    assert not (run_dir / "weights" / "epoch_001.npz").exists()
    weights = np.load(run_dir / "weights" / "epoch_002.npz")
    seen = weights["pseudo_label"] >= 0
    assert seen.sum() == 8  # one step of 8 distinct samples, all tracked
    assert (weights["alpha"][seen] >= 0).all()
    np.testing.assert_array_equal(weights["noisy_label"], data.noisy_labels[weights["index"]])

    evaluated = runner.invoke(app, ["evaluate", str(run_dir)])
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["n"] == 10
    assert summary["epoch"] == 2
    assert summary["accuracy"] == pytest.approx(float(rows[-1]["test_acc"]))  # final = last epoch
    assert "accuracy" in evaluated.output

    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    again = _train(cifar_root, run_dir)
    assert again.exit_code == 2
    assert "use --resume" in again.output
    assert _train(cifar_root, run_dir, "--resume").exit_code == 0  # finished: nothing to do
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before
    changed = _train(cifar_root, run_dir, "--resume", "--set", "optim.lr=0.1")
    assert changed.exit_code == 2
    assert "optim.lr" in changed.output


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("method.mixup_alpha=0", "method.mixup_alpha: must be above 0"),
        ("data.num_meta=15", "num_meta=15"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(cifar_root, tmp_path, override, message):
    result = _train(cifar_root, tmp_path / "run", "--set", override)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_data_is_one_line_and_exit_2(tmp_path):
    result = _train(tmp_path / "nowhere", tmp_path / "run")
    assert result.exit_code == 2
    assert "nowhere" in result.output
    assert not (tmp_path / "run").exists()  # checked before the run folder is created


def _subprocess_train(root, run_dir, *extra):
    launch = "from mlbseg.cli.classify import app; app()"
    command = [sys.executable, "-c", launch, "train", str(SMOKE), "--set", f"data.root={root}"]
    command += ["--set", "train.epochs=3", "--set", "method.warmup_epochs=0", "--run-dir", str(run_dir)]
    return subprocess.Popen(
        [*command, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "CI": "1"}
    )


@pytest.mark.slow
def test_resume_after_a_real_kill_matches_an_uninterrupted_run(cifar_root, tmp_path):
    reference = _subprocess_train(cifar_root, tmp_path / "reference")
    killed_dir = tmp_path / "killed"
    victim = _subprocess_train(cifar_root, killed_dir)
    last = killed_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not last.exists() and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert last.exists(), victim.stderr.read().decode()
    victim.send_signal(signal.SIGKILL)  # during the second epoch, with meta batches already drawn
    victim.wait()
    assert not (killed_dir / "checkpoints" / "final.pt").exists()
    resumed = _subprocess_train(cifar_root, killed_dir, "--resume")
    assert resumed.wait() == 0, resumed.stderr.read().decode()
    assert reference.wait() == 0, reference.stderr.read().decode()
    expected = torch.load(tmp_path / "reference" / "checkpoints" / "final.pt", weights_only=False)["model"]
    actual = torch.load(killed_dir / "checkpoints" / "final.pt", weights_only=False)["model"]
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name
    assert [row["epoch"] for row in _rows(killed_dir)] == ["1", "2", "3"]
    for row, other in zip(_rows(killed_dir), _rows(tmp_path / "reference"), strict=True):
        assert row["test_acc"] == other["test_acc"]
        assert row["beta_share"] == other["beta_share"]
