"""`mlbseg.engine.lock`: one holder at a time, released with the block or the holder's death."""

import signal
import subprocess
import sys

import pytest

from mlbseg.engine.lock import LOCK_NAME, folder_lock, is_locked, run_lock
from mlbseg.errors import UserError


def test_a_held_run_lock_refuses_a_second_holder_with_one_line(tmp_path):
    run_dir = tmp_path / "runs" / "a"
    assert not is_locked(run_dir)  # no folder, no lock file: nothing is created by asking
    assert not run_dir.exists()
    with run_lock(run_dir):
        assert (run_dir / LOCK_NAME).is_file()
        assert is_locked(run_dir)
        with pytest.raises(UserError) as caught, run_lock(run_dir):
            pass
        assert str(caught.value) == (
            f"{run_dir}: another process is training this run (lock held); wait for it or stop it"
        )
        assert is_locked(run_dir)  # the refused attempt did not release the holder's lock
    assert not is_locked(run_dir)


def test_the_lock_ends_with_an_error_in_the_block(tmp_path):
    with pytest.raises(RuntimeError), folder_lock(tmp_path, "busy"):
        raise RuntimeError("boom")
    with folder_lock(tmp_path, "busy"):
        assert is_locked(tmp_path)


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = (
        "import sys, time; from mlbseg.engine.lock import run_lock\n"
        f"with run_lock({str(tmp_path)!r}):\n    print('held', flush=True); time.sleep(60)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        assert is_locked(tmp_path)
        with pytest.raises(UserError, match="lock held"), run_lock(tmp_path):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert (tmp_path / LOCK_NAME).is_file()  # the file stays; the lock went with its holder
        assert not is_locked(tmp_path)
    finally:
        holder.kill()
        holder.wait()
