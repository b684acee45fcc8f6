"""The launchers of `mlbseg repeat` without GPUs or Slurm: slots, environments, the submitit job's pieces."""

import functools
import json
import signal
import sys

import cloudpickle
import pytest
import submitit
import typer
from typer.testing import CliRunner

from mlbseg.cli._errors import reports_user_errors
from mlbseg.cli.repeat import repeat as repeat_command
from mlbseg.errors import UserError
from mlbseg.repeat import scheduler, slurm
from mlbseg.repeat.scheduler import Job, child_env, default_per_gpu, make_slots

app = typer.Typer(pretty_exceptions_enable=False)
app.command("repeat")(reports_user_errors(repeat_command))
app.command("unused")(lambda: None)


@pytest.mark.parametrize(
    ("jobs", "gpus", "per_gpu", "slots"),
    [
        (8, ["0", "1"], 4, ["0", "1"] * 4),  # --jobs 8 on 2 GPUs: 4 per GPU, round-robin
        (8, ["0", "1"], 2, ["0", "1"] * 2),  # --per-gpu 2 caps it at 4 processes
        (3, ["4", "6", "7"], 2, ["4", "6", "7"]),  # fewer jobs than GPUs × K: one per GPU first
        (5, ["4", "6"], 3, ["4", "6", "4", "6", "4"]),
        (2, [], 3, [None, None]),  # no GPUs: per_gpu has no effect
    ],
)
def test_slots_spread_runs_round_robin_over_the_gpus(jobs, gpus, per_gpu, slots):
    assert make_slots(jobs, gpus, per_gpu) == slots


def test_the_default_runs_per_gpu_runs_every_job_at_once():
    assert [default_per_gpu(jobs, 2) for jobs in (1, 2, 3, 8, 9)] == [1, 1, 2, 4, 5]
    assert default_per_gpu(3, 0) == 3
    for jobs, gpus in ((8, ["0", "1"]), (7, ["0", "1", "2"])):
        assert len(make_slots(jobs, gpus, default_per_gpu(jobs, len(gpus)))) == jobs


def test_each_process_on_a_shared_gpu_sees_only_that_gpu_and_its_share_of_the_cores():
    slots = make_slots(4, ["2", "5"], 2)
    envs = [child_env(gpu, 16 // len(slots), base={"PATH": "/bin"}) for gpu in slots]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == ["2", "5", "2", "5"]
    assert {env["OMP_NUM_THREADS"] for env in envs} == {env["MKL_NUM_THREADS"] for env in envs} == {"4"}
    assert all(env["PATH"] == "/bin" for env in envs)


def _invoke(*args):
    return CliRunner().invoke(app, ["repeat", "seg/smoke", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--slurm-time", "60"], "Error: --slurm-time: only with --launcher submitit"),
        (["--slurm-partition", "gpu"], "Error: --slurm-partition: only with --launcher submitit"),
        (["--launcher", "slurm"], "Error: --launcher: unknown launcher 'slurm'; choose process or submitit"),
        (["--launcher", "submitit", "--per-gpu", "2"], "Error: --per-gpu: only with --launcher process"),
    ],
)
def test_launcher_options_that_do_not_fit_stop_before_anything_starts(tmp_path, args, message):
    result = _invoke(*args, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.output.startswith(message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpus_per_run": -1}, "--slurm-gpus-per-run: must be 0 or more"),
        ({"time_min": 0}, "--slurm-time: minutes, 1 or more"),
        ({"array_parallelism": 0}, "--slurm-array-parallelism: must be 1 or more"),
    ],
)
def test_cluster_options_out_of_range_name_their_option(options, message):
    with pytest.raises(UserError, match=message):
        slurm.ClusterOptions(**options).check()


def test_the_job_pickles_without_its_worker_process(tmp_path):
    job = slurm.RunJob("seg", tmp_path / "c.yaml", tmp_path / "run", ["a=1"], out=tmp_path, threads=2)
    job._running = object()  # a live worker is never part of the requeued job
    copy = cloudpickle.loads(cloudpickle.dumps(job))
    assert copy._running is None
    assert (copy.task_name, copy.run_dir, copy.overrides, copy.threads) == (
        "seg",
        tmp_path / "run",
        ("a=1",),
        2,
    )
    assert job._running is not None
    resubmitted = job.checkpoint.__func__ is not submitit.helpers.Checkpointable.checkpoint
    assert resubmitted  # our checkpoint stops the worker before submitit requeues


class _FakeJob:
    def __init__(self, job_id):
        self.job_id = job_id


def test_the_job_record_is_written_and_read_back_as_submitit_jobs(tmp_path):
    slurm.write_record(
        tmp_path, "local", {"baseline-L1-seed0": _FakeJob("123"), "mlbseg-L1-seed0": _FakeJob("124")}
    )
    record = json.loads(slurm.record_path(tmp_path).read_text())
    assert (record["format"], record["cluster"]) == (1, "local")
    assert {name: entry["job_id"] for name, entry in record["jobs"].items()} == {
        "baseline-L1-seed0": "123",
        "mlbseg-L1-seed0": "124",
    }
    first = record["jobs"]["baseline-L1-seed0"]["submitted"]
    slurm.write_record(tmp_path, "local", {"baseline-L1-seed0": _FakeJob("123")})  # keeps the submission time
    assert (
        json.loads(slurm.record_path(tmp_path).read_text())["jobs"]["baseline-L1-seed0"]["submitted"] == first
    )
    jobs = slurm.read_record(tmp_path, "local")
    assert isinstance(jobs["baseline-L1-seed0"], submitit.LocalJob)
    assert jobs["baseline-L1-seed0"].job_id == "123"
    assert not slurm.is_active(jobs["baseline-L1-seed0"])  # no process of ours: ended


def test_a_damaged_job_record_is_one_line(tmp_path):
    slurm.record_path(tmp_path).parent.mkdir()
    slurm.record_path(tmp_path).write_text('{"jobs": [1, 2]')
    with pytest.raises(UserError, match=r"jobs.json: not a job record of mlbseg repeat; remove it"):
        slurm.read_record(tmp_path, "local")


def test_the_worker_leaves_sigterm_and_preemption_to_its_job_and_stops_with_it(tmp_path):
    code = (
        "import ctypes, signal; libc = ctypes.CDLL(None); value = ctypes.c_int(); "
        "libc.prctl(2, ctypes.byref(value)); "  # PR_GET_PDEATHSIG
        "print(signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN, "
        "signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, value.value)"
    )
    job = Job("w", [sys.executable, "-c", code], tmp_path / "log.txt")
    running = scheduler.start(job, None, 1, preexec=functools.partial(slurm._worker_setup, signal.SIGUSR2))
    assert running.process.wait(timeout=30) == 0
    scheduler.stop([running])
    assert (tmp_path / "log.txt").read_text().split() == ["True", "True", str(int(signal.SIGINT))]
