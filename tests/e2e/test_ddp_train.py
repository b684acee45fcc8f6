"""`torchrun --nproc-per-node 2 -m mlbseg train` on the CPU (gloo): one run folder, resume after a kill.

Two processes train the smoke config on tiny phantoms. Rank 0 alone writes the run folder; a run killed
(the whole process group, SIGKILL) after its first checkpoint resumes on two processes to exactly the
weights of an uninterrupted run; mistakes end every process with the one-line error instead of a hang.
"""

import contextlib
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
from mlbseg.seg.evaluate import evaluate_run

from .processes import alive, descendants

ROOT = Path(__file__).parents[2]
SMOKE = ROOT / "mlbseg" / "configs" / "seg" / "smoke.yaml"
TORCHRUN = Path(sys.executable).with_name("torchrun")
TIMEOUT = 240
runner = CliRunner()

pytestmark = [
    pytest.mark.slow,  # torchrun end to end; the default tier checks the same arithmetic on 2 gloo processes
    pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to python"),
]


@pytest.fixture(scope="module")
def prepared(phantoms):
    return phantoms[1]


def _torchrun(prepared: Path, run_dir: Path, *extra: str) -> subprocess.Popen:
    """Two CPU processes training 3 epochs of 2 steps; their own session, so the group can be killed."""
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m", "mlbseg", "train"]
    command += [str(SMOKE), "--set", f"data.prepared={prepared}", "--set", "train.device=cpu"]
    command += ["--set", "train.epochs=3", "--run-dir", str(run_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def _wait_until_dead(pids: list[int]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still alive after SIGKILL: {pids}"
        time.sleep(0.05)


def _finish(process: subprocess.Popen) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT} s (deadlock?):\n{output.decode()[-3000:]}")
    return process.returncode, output.decode()


def _model(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=False)["model"]


@pytest.fixture(scope="module")
def finished(prepared, tmp_path_factory):
    """An uninterrupted two-process run."""
    run_dir = tmp_path_factory.mktemp("ddp") / "run"
    code, output = _finish(_torchrun(prepared, run_dir))
    assert code == 0, output
    return run_dir


def test_rank_0_alone_writes_the_run_folder(finished):
    assert sorted(path.name for path in finished.iterdir()) == [
        ".lock",  # the run folder's lock, held by rank 0 while training
        "checkpoints",
        "config.yaml",
        "metrics.csv",
        "tensorboard",
    ]
    assert sorted(path.name for path in (finished / "checkpoints").iterdir()) == ["final.pt", "last.pt"]
    assert len(list((finished / "tensorboard").iterdir())) == 1  # one events file: rank 0's
    rows = list(csv.DictReader((finished / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    for row in rows:
        for key in ("loss", "meta_loss", "alpha_mean", "beta_mean", "meta_dice"):
            assert float(row[key]) == float(row[key]), key  # present and not NaN (meta_dice: rank 0's)
    last = torch.load(finished / "checkpoints" / "last.pt", weights_only=False)
    assert last["world_size"] == 2
    assert last["epoch"] == 3
    assert last["global_step"] == 6
    first, second = last["rank_generators"]
    assert not torch.equal(first, second)  # each process augments with its own generator


def test_resume_after_killing_every_process_matches_the_uninterrupted_run(prepared, finished, tmp_path):
    run_dir = tmp_path / "killed"
    victim = _torchrun(prepared, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + TIMEOUT
    while not last.exists() and time.monotonic() < deadline and victim.poll() is None:
        time.sleep(0.05)
    assert last.exists(), _finish(victim)[1]
    workers = descendants(victim.pid)  # torchrun starts its workers in sessions of their own
    assert len(workers) >= 2
    os.killpg(victim.pid, signal.SIGKILL)  # torchrun and both workers, mid-run
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    victim.wait()
    _wait_until_dead(workers)
    assert not (run_dir / "checkpoints" / "final.pt").exists()
    code, output = _finish(_torchrun(prepared, run_dir, "--resume"))
    assert code == 0, output
    expected, actual = (
        _model(finished / "checkpoints" / "final.pt"),
        _model(run_dir / "checkpoints" / "final.pt"),
    )
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]


def test_a_mistake_stops_both_processes_with_one_line(prepared, finished):
    code, output = _finish(_torchrun(prepared, finished))  # the folder holds a run: no --resume
    assert code != 0
    # both ranks report it, neither hangs
    assert output.count("use --resume, --overwrite or another --run-dir") == 2


def test_resuming_with_another_number_of_processes_is_refused(prepared, finished):
    args = ["train", str(SMOKE), "--set", f"data.prepared={prepared}", "--set", "train.device=cpu"]
    result = runner.invoke(app, [*args, "--set", "train.epochs=3", "--run-dir", str(finished), "--resume"])
    assert result.exit_code == 2
    assert "torchrun --nproc-per-node 2" in result.output


@pytest.mark.parametrize("method", ["coteaching", "trinet", "dast"])
def test_the_methods_with_several_networks_train_on_two_processes(prepared, tmp_path, method):
    """Their peers are built, stepped (gradients averaged) and checkpointed on every process alike."""
    run_dir = tmp_path / method
    code, output = _finish(_torchrun(prepared, run_dir, "--set", f"method.name={method}"))
    assert code == 0, output
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert last["world_size"] == 2
    assert len(last["peers"]) == {"coteaching": 1, "trinet": 2, "dast": 1}[method]
    if method == "dast":
        assert len(last["dast"]["noisiness"]) == 12  # 3 epochs × 2 steps × 2 processes × 1 slice, under 20
    final = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)
    assert "peers" not in final
    if method == "dast":  # the mean of both networks is evaluated
        assert final["model"].keys() == {f"networks.{i}.{key}" for i in range(2) for key in last["model"]}
    else:  # the first network is
        assert final["model"].keys() == last["model"].keys()
    # the last epoch's weights, read from last.pt (networks apart) and final.pt, score alike
    assert evaluate_run(run_dir, "last")["mean"] == evaluate_run(run_dir, "final")["mean"]
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert all(float(row["loss"]) == float(row["loss"]) for row in rows)  # no NaN
