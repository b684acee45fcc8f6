"""The run folder's promises through `mlbseg train` and `mlbseg classify train` (hostile input, faults).

Every mistake is one line and exit 2 with nothing created; a failed start never blocks the corrected
command; `--overwrite` replaces a run; a live run (its lock held) refuses a second writer; SIGTERM ends a
run with exit 143 and a resume hint, and the resume finishes it.
"""

import importlib.util
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mlbseg.cli import app
from mlbseg.engine.lock import run_lock

ROOT = Path(__file__).parents[2]
SEG_SMOKE = ROOT / "mlbseg" / "configs" / "seg" / "smoke.yaml"
CLS_SMOKE = ROOT / "mlbseg" / "configs" / "cls" / "smoke.yaml"
runner = CliRunner()


@pytest.fixture(scope="module")
def prepared(phantoms):
    return phantoms[1]


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("_fakes", ROOT / "tests" / "unit" / "cls" / "cls_fakes.py")
    fakes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fakes)
    return fakes.write_cifar10(tmp_path_factory.mktemp("cifar"), per_batch=60, test_size=10)


def _seg(prepared, run_dir, *extra, config=SEG_SMOKE):
    args = ["train", str(config), "--set", f"data.prepared={prepared}", "--run-dir", str(run_dir), *extra]
    return runner.invoke(app, args)


def _cls(root, run_dir, *extra):
    args = ["classify", "train", str(CLS_SMOKE), "--set", f"data.root={root}", "--run-dir", str(run_dir)]
    return runner.invoke(app, [*args, *extra])


def _one_line_error(result, fragment):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epochs=0", "train.epochs: must be 1 or more, got 0"),
        ("train.steps_per_epoch=0", "train.steps_per_epoch: must be 1 or more"),
        ("train.batch_size=0", "train.batch_size: must be 1 or more"),
        ("train.log_every=0", "train.log_every: must be 1 or more"),
        ("optim.lr=0", "optim.lr: must be above 0"),
        ("optim.momentum=1.0", "optim.momentum: must be in [0, 1)"),
        ("optim.weight_decay=-1e-4", "optim.weight_decay: must be 0 or more"),
        ("data.foreground_fraction=1.5", "data.foreground_fraction: must be in [0, 1]"),
        ("data.flip_prob=-0.1", "data.flip_prob: must be in [0, 1]"),
        ("method.meta_batch_size=0", "method.meta_batch_size: must be 1 or more"),
        ("method.ema.decay=1.0", "method.ema.decay: must be in [0, 1)"),
        ("optim.lr=[1", "the value is not valid YAML"),
        ("data.prepared=/nonexistent/prepared", "/nonexistent/prepared"),
    ],
)
def test_seg_mistakes_are_one_line_and_create_nothing(prepared, tmp_path, override, fragment):
    run_dir = tmp_path / "run"
    _one_line_error(_seg(prepared, run_dir, "--set", override), fragment)
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.epochs=0", "train.epochs: must be 1 or more"),
        ("train.num_workers=-1", "train.num_workers: must be 0 or more"),
        ("train.eval_batch_size=0", "train.eval_batch_size: must be 1 or more"),
        ("data.noise_rate=1.5", "data.noise_rate: must be in [0, 1]"),
        ("optim.betas=[0.9, 1.0]", "optim.betas: must be in [0, 1)"),
        ("model.weights=/nonexistent.pth", "model.weights: /nonexistent.pth not found"),
    ],
)
def test_cls_mistakes_are_one_line_and_create_nothing(cifar_root, tmp_path, override, fragment):
    run_dir = tmp_path / "run"
    _one_line_error(_cls(cifar_root, run_dir, "--set", override), fragment)
    assert not run_dir.exists()


def test_a_binary_file_or_a_folder_as_config_is_one_line(prepared, tmp_path):
    binary = tmp_path / "weights.pt"
    torch.save({"x": torch.zeros(3)}, binary)
    _one_line_error(_seg(prepared, tmp_path / "run", config=binary), "not a text file")
    _one_line_error(_seg(prepared, tmp_path / "run", config=tmp_path), "is a folder")
    assert not (tmp_path / "run").exists()


def test_a_run_dir_that_is_a_file_is_one_line(prepared, tmp_path):
    blocker = tmp_path / "run"
    blocker.write_text("not a folder")
    _one_line_error(_seg(prepared, blocker), "exists and is not a folder")
    assert blocker.read_text() == "not a folder"


def test_a_failed_start_never_blocks_the_corrected_command(prepared, tmp_path):
    run_dir = tmp_path / "run"
    _one_line_error(
        _seg(prepared, run_dir, "--set", "data.noise=L2", "--set", "data.prepared=/nowhere"), "nowhere"
    )
    (run_dir / "checkpoints").mkdir(parents=True)  # what a start that died before its first epoch leaves
    (run_dir / "config.yaml").write_text("name: stale\n")
    assert _seg(prepared, run_dir).exit_code == 0
    assert "name: smoke" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "checkpoints" / "final.pt").is_file()


@pytest.mark.slow
def test_overwrite_replaces_a_finished_run_and_is_refused_without_it(cifar_root, tmp_path):
    run_dir = tmp_path / "run"
    assert _cls(cifar_root, run_dir, "--set", "train.epochs=1").exit_code == 0
    _one_line_error(_cls(cifar_root, run_dir), "holds a run; use --resume, --overwrite")
    replaced = _cls(cifar_root, run_dir, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    state = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)
    assert state["epoch"] == 2  # the new run's, not the old one's
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no leftover copy of the old run


def test_resume_of_a_live_run_is_refused(prepared, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"a live run's checkpoint")
    with run_lock(run_dir):  # as a process that still trains this run holds it
        _one_line_error(_seg(prepared, run_dir, "--resume"), "another process is training this run")
        _one_line_error(_seg(prepared, run_dir, "--overwrite"), "another process is training this run")
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == b"a live run's checkpoint"


@pytest.mark.slow
def test_sigterm_ends_training_with_a_resume_hint_and_the_resume_finishes(prepared, tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "mlbseg", "train", str(SEG_SMOKE), "--set", f"data.prepared={prepared}"]
    longer = ["--set", "train.epochs=3", "--set", "train.steps_per_epoch=4"]
    command += [*longer, "--run-dir", str(run_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read()
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 143
    finally:
        process.kill()
    stderr = process.stderr.read()
    assert "Traceback" not in stderr
    assert f"interrupted; continue with the same command with --resume --run-dir {run_dir}" in stderr
    assert not (run_dir / "checkpoints" / "final.pt").exists()
    resumed = _seg(prepared, run_dir, *longer, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)["epoch"] == 3


def test_an_error_inside_a_loader_worker_is_the_same_one_line(tmp_path):
    spec = importlib.util.spec_from_file_location("_fakes", ROOT / "tests" / "unit" / "cls" / "cls_fakes.py")
    fakes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fakes)
    root = tmp_path / "isic"
    fakes.write_isic(root)
    for image in (root / "ISIC_2019_Training_Input").iterdir():
        image.write_bytes(b"not a jpeg")
    config = tmp_path / "isic.yaml"
    config.write_text(
        "data: {dataset: isic2019, root: " + str(root) + ", meta_per_class: 1, test_fraction: 0.2}\n"
        "model: {arch: resnet18}\n"
        "method: {name: baseline}\n"
        "train: {epochs: 1, batch_size: 4, steps_per_epoch: 1, num_workers: 1, device: cpu}\n"
    )
    result = runner.invoke(app, ["classify", "train", str(config), "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.output  # the rest is the data summary and the progress bar
    assert ".jpg is not a readable image" in errors[0]
    assert errors[0].endswith("; replace the file")  # the worker's own message, nothing appended
    assert "Traceback" not in result.output
    assert "DataLoader worker" not in result.output
