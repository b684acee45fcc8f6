"""Multi-node torchrun on one machine: two agents (``--nnodes 2 --nproc-per-node 1``), c10d over loopback.

The command is the README's multi-node one with both "nodes" on 127.0.0.1 (gloo, CPU). The two-node run
must end with exactly the weights of the single-node two-process run of test_ddp_train (same world size,
same global batches; the rank decides the data part and the augmentation stream, not the node), and a run
whose agents are both killed (SIGKILL, with their workers) after the first checkpoint must resume on two
agents to exactly those weights.
"""

import contextlib
import csv
import os
import signal
import socket
import subprocess
import time
import uuid

import pytest
import torch

from .processes import descendants
from .test_ddp_train import SMOKE, TIMEOUT, TORCHRUN, _finish, _model, _wait_until_dead, finished, prepared

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to python"),
]
__all__ = ["finished", "prepared"]  # the single-node fixtures this module compares against


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _agents(prepared, run_dir, *extra):
    """Both agents of one two-node rendezvous; each in its own session, so each group can be killed."""
    endpoint, rdzv_id = f"127.0.0.1:{_free_port()}", uuid.uuid4().hex[:8]
    command = [str(TORCHRUN), "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d"]
    command += ["--rdzv-endpoint", endpoint, "--rdzv-id", rdzv_id, "--local-addr", "127.0.0.1"]
    command += ["--max-restarts", "0", "-m", "mlbseg", "train", str(SMOKE)]
    command += ["--set", f"data.prepared={prepared}", "--set", "train.device=cpu", "--set", "train.epochs=3"]
    command += ["--run-dir", str(run_dir), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return [
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        for _ in range(2)
    ]


def _finish_all(agents):
    results = [_finish(agent) for agent in agents]
    for code, output in results:
        assert code == 0, output[-3000:]


def _same_weights(expected, actual):
    for name, value in expected.items():
        assert torch.equal(value, actual[name]), name


def test_two_agents_train_to_the_weights_of_the_single_node_run(prepared, finished, tmp_path):
    run_dir = tmp_path / "two-nodes"
    _finish_all(_agents(prepared, run_dir))
    _same_weights(_model(finished / "checkpoints" / "final.pt"), _model(run_dir / "checkpoints" / "final.pt"))
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert (last["world_size"], last["epoch"], last["global_step"]) == (2, 3, 6)
    assert len(list((run_dir / "tensorboard").iterdir())) == 1  # rank 0 alone writes, on whichever node


def test_resume_after_killing_both_agents_matches_the_uninterrupted_run(prepared, finished, tmp_path):
    run_dir = tmp_path / "killed"
    agents = _agents(prepared, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    deadline = time.monotonic() + TIMEOUT
    while not last.exists() and time.monotonic() < deadline and all(agent.poll() is None for agent in agents):
        time.sleep(0.05)
    assert last.exists(), [_finish(agent)[1][-2000:] for agent in agents]
    workers = [pid for agent in agents for pid in descendants(agent.pid)]
    for agent in agents:  # both agents and their workers (in sessions of their own), mid-run
        with contextlib.suppress(ProcessLookupError):
            os.killpg(agent.pid, signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for agent in agents:
        agent.wait()
    _wait_until_dead(workers)
    assert not (run_dir / "checkpoints" / "final.pt").exists()

    _finish_all(_agents(prepared, run_dir, "--resume"))
    _same_weights(_model(finished / "checkpoints" / "final.pt"), _model(run_dir / "checkpoints" / "final.pt"))
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
