"""`mlbseg repeat --launcher submitit` without Slurm: submitit's local jobs, a preemption and its requeue.

Where no Slurm is installed, submitit's AutoExecutor runs every job as a local process (a controller that
starts the job, requeues it when the job asks to, and forwards SIGTERM to it). ``LocalJob._interrupt``
is submitit's preemption simulation: it sends the preemption signal to that controller. The controller
forwards only SIGTERM, so these tests make SIGTERM the preemption signal (submitit's
``SUBMITIT_PREEMPT_SIGNAL``, read by the job processes, and ``JobEnvironment.USR_SIG`` in this one); with
the default USR2 the controller itself would die and leave the job running on its own.

The Slurm side of the bookkeeping (jobs still queued, jobs that ended, the record) is checked with fake
jobs on fabricated run folders: no training, no processes.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch
from rich.console import Console
from submitit.core.job_environment import JobEnvironment

from mlbseg.config import load_config
from mlbseg.engine.run_dir import save_config
from mlbseg.errors import UserError
from mlbseg.repeat import repeat, scheduler, slurm
from mlbseg.seg.config import SegConfig, with_absolute_paths

from .processes import alive, descendants

ROOT = Path(__file__).parents[2]
SMOKE = ROOT / "mlbseg" / "configs" / "seg" / "smoke.yaml"
INTERRUPTED = "baseline-L1-seed1"


@pytest.fixture(scope="module")
def prepared(phantoms):
    return phantoms[1]


def _grid(prepared, out, **options):
    overrides = [f"data.prepared={prepared}", "train.device=cpu", "train.epochs=3"]
    return repeat(
        SMOKE,
        seeds=[0, 1],
        noises=["L1"],
        methods=["baseline"],
        overrides=overrides,
        out=out,
        console=Console(width=200),
        **options,
    )


def _interrupt_once_checkpointed(job, run_dir, done):
    """Preempt ``job`` (submitit's own simulation) once its run has a ``last.pt``."""
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    job._interrupt()
    done.set()


def _model(run_dir):
    return torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)["model"]


def test_a_preempted_local_job_is_requeued_and_the_table_equals_the_process_launchers(
    prepared, tmp_path, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same threads in both launchers: bit-exact runs
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "TERM")
    monkeypatch.setattr(JobEnvironment, "USR_SIG", "TERM")
    monkeypatch.setattr(slurm, "cluster_name", lambda: "local")  # also where Slurm is installed
    reference = _grid(prepared, tmp_path / "process", jobs=2)
    assert not reference.failed

    out = tmp_path / "submitit"
    interrupted, watchers = threading.Event(), []

    def preempt_one(jobs):
        watcher = threading.Thread(
            target=_interrupt_once_checkpointed, args=(jobs[INTERRUPTED], out / INTERRUPTED, interrupted)
        )
        watcher.start()
        watchers.append(watcher)

    result = _grid(prepared, out, cluster=slurm.ClusterOptions(time_min=10, on_submit=preempt_one))
    for watcher in watchers:
        watcher.join()
    assert interrupted.is_set()
    assert not result.failed
    assert result.rows == reference.rows  # Dice and HD95 mean, std and n, identical
    assert [record.values for record in result.records] == [record.values for record in reference.records]
    for name in ("cases.csv", "stats.json"):  # per-case results and statistics, identical too
        assert (out / name).read_text() == (tmp_path / "process" / name).read_text()
    assert len((out / "cases.csv").read_text().splitlines()) > 1

    record = json.loads((out / ".submitit" / "jobs.json").read_text())
    assert (record["format"], record["cluster"], record["jobs"]) == (1, "local", {})  # all collected
    log = (out / INTERRUPTED / "log.txt").read_text()
    assert log.index("mlbseg repeat: fresh") < log.index("interrupted by SIGINT")
    assert log.index("interrupted by SIGINT") < log.index("mlbseg repeat: resume")
    assert log.count("--ignore-sigterm") == 2  # the job alone stops its worker
    (job_log,) = [
        path for path in (out / ".submitit").glob("*_0_log.out") if "Requeued job" in path.read_text()
    ]
    assert "Caught signal SIGTERM" in job_log.read_text()  # submitit's handler, then our checkpoint
    expected, actual = _model(tmp_path / "process" / INTERRUPTED), _model(out / INTERRUPTED)
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name


# --- the Slurm bookkeeping, with fake jobs -------------------------------------------------------------


class FakeJob:
    def __init__(self, job_id, active):
        self.job_id, self.active, self.state = job_id, active, "RUNNING" if active else "COMPLETED"
        self.paths = types.SimpleNamespace(result_pickle=Path("/nonexistent/result.pkl"))

    def done(self):
        return not self.active


def _fabricate_finished(prepared, run_dir, seed, dice):
    """A run folder as a finished run leaves it: its config, final.pt, and a summary of final.pt."""
    overrides = [f"data.prepared={prepared}", f"train.seed={seed}", "method.name=baseline", "data.noise=L1"]
    cfg = with_absolute_paths(load_config(SegConfig, SMOKE, overrides))
    (run_dir / "checkpoints").mkdir(parents=True)
    save_config(cfg, run_dir / "config.yaml")
    (run_dir / "checkpoints" / "final.pt").write_bytes(b"")
    summary = {"checkpoint": "final", "mean": {"dice": {"mean": dice}, "hd95": {"mean": 4.0}}}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def _slurm_grid(prepared, out, **options):
    return repeat(
        SMOKE,
        seeds=[0, 1],
        noises=["L1"],
        methods=["baseline"],
        overrides=[f"data.prepared={prepared}"],
        out=out,
        cluster=slurm.ClusterOptions(**options),
        console=Console(width=200),
    )


def test_slurm_jobs_still_queued_are_left_alone_and_the_table_waits_for_them(prepared, tmp_path, monkeypatch):
    out = tmp_path / "out"
    jobs = {
        "baseline-L1-seed0": FakeJob("41_0", active=True),
        "baseline-L1-seed1": FakeJob("41_1", active=True),
    }
    monkeypatch.setattr(slurm, "cluster_name", lambda: "slurm")
    monkeypatch.setattr(slurm, "read_record", lambda out, cluster: dict(jobs))
    submitted = []
    monkeypatch.setattr(slurm, "submit", lambda executor, runs: submitted.append(runs) or {})

    result = _slurm_grid(prepared, out)
    assert result.pending == {"baseline-L1-seed0": "41_0", "baseline-L1-seed1": "41_1"}
    assert (result.rows, result.tables) == ([], [])
    assert submitted == []  # nothing submitted twice
    assert not (out / "table.json").exists()

    # seed 0's job finished its run, seed 1's job ended without finishing it: the table is due
    _fabricate_finished(prepared, out / "baseline-L1-seed0", 0, dice=0.5)
    for job in jobs.values():
        job.active = False
    slurm.write_record(out, "slurm", jobs)
    result = _slurm_grid(prepared, out)
    assert result.pending == {}
    statuses = {record.name: record.status for record in result.records}
    assert statuses == {"baseline-L1-seed0": "finished", "baseline-L1-seed1": "failed"}
    assert submitted == []  # the failed run is reported, not resubmitted in the same call
    (row,) = result.rows
    assert (row["n"], row["failed"], row["dice_mean"]) == (1, 1, 50.0)
    assert json.loads(slurm.record_path(out).read_text())["jobs"] == {}  # collected


def test_a_job_record_from_slurm_is_refused_where_there_is_no_slurm(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "cluster_name", lambda: "local")
    out = tmp_path / "out"
    slurm.write_record(out, "slurm", {"baseline-L1-seed0": FakeJob("7_0", active=True)})
    with pytest.raises(UserError, match=r"jobs.json: its jobs were submitted to Slurm"):
        _slurm_grid(prepared, out)


# --- runs per GPU, with fake GPU ids ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gpus", "per_gpu", "slots", "notice"),
    [
        (["0", "1"], None, ["0", "1", "0", "1"], None),  # default: ⌈4 / 2⌉ per GPU, all four at once
        (["0", "1"], 1, ["0", "1"], "--jobs 4: running 2 at a time, 1 per GPU on 2 GPU(s)"),
        ([], 2, [None] * 4, "--per-gpu 2: ignored, these runs use no GPU"),
    ],
)
def test_the_process_launcher_packs_runs_onto_gpus(
    prepared, tmp_path, monkeypatch, gpus, per_gpu, slots, notice
):
    seen = []
    monkeypatch.setattr(scheduler, "gpu_ids", lambda: gpus)
    monkeypatch.setattr(scheduler, "run_jobs", lambda jobs, given, report: seen.append(given) or [])
    console = Console(width=200, record=True)
    repeat(
        SMOKE,
        seeds=[0, 1, 2, 3],
        noises=["L1"],
        methods=["baseline"],
        overrides=[f"data.prepared={prepared}"],
        out=tmp_path / "out",
        jobs=4,
        per_gpu=per_gpu,
        console=console,
    )
    assert seen == [slots]
    text = console.export_text()
    assert (notice in text) if notice else ("at a time" not in text and "ignored" not in text)


# --- local jobs are children of the command -------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_cancels_the_local_jobs_and_the_same_command_resumes_them(prepared, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "mlbseg", "repeat", str(SMOKE), "--seeds", "0", "--noise", "L1"]
    command += ["--methods", "baseline", "--launcher", "submitit", "--out", str(out)]
    command += ["--set", f"data.prepared={prepared}", "--set", "train.device=cpu", "--set", "train.epochs=3"]
    # no srun on the PATH: submitit's local executor even where Slurm is installed
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": str(Path(sys.executable).parent)}
    victim = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    run_dir = out / "baseline-L1-seed0"
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert victim.poll() is None, victim.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.02)
        started = descendants(victim.pid)  # submitit's controller, the job, the worker
        assert len(started) >= 3
        victim.send_signal(signal.SIGTERM)
        _, stderr = victim.communicate(timeout=60)
    finally:
        victim.kill()
        victim.wait()
    assert victim.returncode == 143, stderr.decode()
    assert not any(alive(pid) for pid in started)
    assert json.loads(slurm.record_path(out).read_text())["jobs"] == {}
    assert not (run_dir / "checkpoints" / "final.pt").exists()

    again = subprocess.run(command, capture_output=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr.decode()
    assert "submitted baseline-L1-seed0 (resume)" in again.stdout.decode()
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["1", "2", "3"]


@pytest.mark.slow
def test_a_failing_local_job_lands_in_the_failed_column_with_its_log(prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(slurm, "cluster_name", lambda: "local")
    out = tmp_path / "out"
    result = repeat(
        SMOKE,
        seeds=[0],
        noises=["L1"],
        methods=["mlbseg"],
        overrides=[f"data.prepared={prepared}", "method.views.zoom_pads=[4,20]"],  # refused by the trainer
        out=out,
        cluster=slurm.ClusterOptions(time_min=5),
        console=Console(width=200),
    )
    (failed,) = result.failed
    log = out / "mlbseg-L1-seed0" / "log.txt"
    assert failed.log == log
    assert "Error: method.views.zoom_pads" in log.read_text()
    (row,) = result.rows
    assert (row["n"], row["failed"], row["failed_logs"]) == (0, 1, [str(log)])
    (job_log,) = (out / ".submitit").glob("*_0_log.out")
    assert "RunFailedError: mlbseg-L1-seed0: worker exited with code 2" in job_log.read_text()
