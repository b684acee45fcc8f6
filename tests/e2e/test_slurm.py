"""`mlbseg repeat --launcher submitit` on a real single-node Slurm, started by the test as root on localhost.

The fixture writes slurm.conf and cgroup.conf into a temporary folder, starts munged (its own key and
socket), slurmctld and slurmd from Debian's ``slurm-wlm`` and ``munge`` packages, and points every Slurm
command at that configuration (``SLURM_CONF``). The node claims 8 CPUs whatever the machine has
(``SlurmdParameters=config_overrides``), so two 4-CPU jobs fit on a small machine. There is no accounting
database: ``sacct`` reports that accounting is disabled, submitit then learns that a job ended from its
result file, which every job of these tests leaves. Without root or without the binaries the tests are
skipped, with the reason.
"""

import contextlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from mlbseg.repeat import repeat, slurm

ROOT = Path(__file__).parents[2]
SMOKE = ROOT / "mlbseg" / "configs" / "seg" / "smoke.yaml"
DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "srun", "scontrol", "sinfo", "scancel")
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _why_not() -> str | None:
    """Why a Slurm cannot be started here, or None."""
    if os.geteuid() != 0:
        return "a local Slurm needs root (slurmd runs the jobs); run the slow tier as root"
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None]
    if missing:
        return f"Slurm or munge not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
    return None


def _slurm_conf(base: Path, host: str) -> str:
    return "\n".join(
        [
            "ClusterName=mlbsegtest",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={base / 'munge.socket'},cred_expire=10",  # a requeued job waits for it
            f"StateSaveLocation={base / 'state'}",
            f"SlurmdSpoolDir={base / 'spool'}",
            f"SlurmctldPidFile={base / 'slurmctld.pid'}",
            f"SlurmdPidFile={base / 'slurmd.pid'}",
            f"SlurmctldLogFile={base / 'slurmctld.log'}",
            f"SlurmdLogFile={base / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            f"NodeName={host} NodeAddr=127.0.0.1 CPUs=8 RealMemory=4000 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _daemon(*command: str) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        pytest.skip(f"{command[0]} did not start: {result.stderr.strip() or result.stdout.strip()}")


def _stop(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        os.kill(int(pid_file.read_text().split()[0]), 15)


@pytest.fixture(scope="module")
def local_slurm(tmp_path_factory):
    """A running single-node Slurm; SLURM_CONF points at it for this module."""
    reason = _why_not()
    if reason:
        pytest.skip(reason)
    base = tmp_path_factory.mktemp("slurm")
    for folder in ("state", "spool", "munge"):
        (base / folder).mkdir()
    key = base / "munge" / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    (base / "munge").chmod(0o700)
    host = socket.gethostname()
    conf = base / "slurm.conf"
    conf.write_text(_slurm_conf(base, host))
    (base / "cgroup.conf").write_text("CgroupAutomount=no\nConstrainCores=no\nConstrainRAMSpace=no\n")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    munge = ["munged", "--force", f"--key-file={key}", f"--socket={base / 'munge.socket'}"]
    munge += [f"--pid-file={base / 'munged.pid'}", f"--log-file={base / 'munged.log'}"]
    munge += [f"--seed-file={base / 'munge' / 'munged.seed'}"]
    try:
        _daemon(*munge)
        _daemon("slurmctld", "-c", "-f", str(conf))
        _daemon("slurmd", "-f", str(conf))
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            logs = "".join(path.read_text()[-800:] for path in base.glob("slurm*.log"))
            pytest.skip(f"the local Slurm node did not become idle (state {state!r}): {logs}")
        yield base
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True, timeout=30, check=False)
        for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
            _stop(base / name)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous


@pytest.fixture(scope="module")
def prepared(phantoms):
    return phantoms[1]


PREEMPTED = "baseline-L1-seed1"


def _grid(prepared, out, **options):
    return repeat(
        SMOKE,
        seeds=[0, 1],
        noises=["L1"],
        methods=["baseline"],
        overrides=[f"data.prepared={prepared}", "train.device=cpu", "train.epochs=3"],
        out=out,
        console=Console(width=200),
        **options,
    )


def _preempt_once_checkpointed(job, run_dir, watchers):
    def preempt():
        deadline = time.monotonic() + 180
        while not (run_dir / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        job._interrupt()  # submitit's preemption: scancel --signal SIGTERM, then USR2

    watchers.append(threading.Thread(target=preempt))
    watchers[-1].start()


def test_a_slurm_job_array_runs_the_grid_a_preempted_job_resumes_and_the_same_command_collects_it(
    local_slurm, prepared, tmp_path, monkeypatch
):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # as in the reference run: identical numbers
    monkeypatch.setattr(slurm, "CLUSTER_POLL_SECONDS", 1.0)
    reference = _grid(prepared, tmp_path / "process", jobs=2)
    out = tmp_path / "slurm"
    options = {"gpus_per_run": 0, "time_min": 10}
    watchers = []

    def on_submit(jobs):
        _preempt_once_checkpointed(jobs[PREEMPTED], out / PREEMPTED, watchers)

    submitted = _grid(prepared, out, cluster=slurm.ClusterOptions(**options, on_submit=on_submit))
    assert sorted(submitted.pending) == ["baseline-L1-seed0", "baseline-L1-seed1"]
    ids = set(submitted.pending.values())
    assert len({job_id.partition("_")[0] for job_id in ids}) == 1  # one job array
    assert not (out / "table.json").exists()
    record = json.loads(slurm.record_path(out).read_text())
    assert record["cluster"] == "slurm"
    assert {entry["job_id"] for entry in record["jobs"].values()} == ids

    for watcher in watchers:
        watcher.join()
    waited = _grid(prepared, out, cluster=slurm.ClusterOptions(**options, wait=True))
    assert waited.pending == {}
    assert not waited.failed
    assert waited.rows == reference.rows
    assert json.loads(slurm.record_path(out).read_text())["jobs"] == {}
    for name, job_id in submitted.pending.items():
        assert f"(submitit job {job_id})" in (out / name / "log.txt").read_text()  # not submitted twice
    log = (out / PREEMPTED / "log.txt").read_text()
    assert log.index("mlbseg repeat: fresh") < log.index("interrupted by SIGINT")
    assert log.index("interrupted by SIGINT") < log.index("mlbseg repeat: resume")

    again = _grid(prepared, out, cluster=slurm.ClusterOptions(**options))
    assert {record.status for record in again.records} == {"skipped"}
