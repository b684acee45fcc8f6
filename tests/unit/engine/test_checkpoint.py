import os

import pytest
import torch

from mlbseg.engine.checkpoint import load_checkpoint, save_checkpoint
from mlbseg.errors import UserError


def test_round_trip_and_no_temporary_files_left(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint({"model": model.state_dict(), "epoch": 4}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 4
    assert torch.equal(state["model"]["weight"], model.weight)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {}, "epoch": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"model": {}, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_truncated_and_foreign_files_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")
    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match="not a readable mlbseg checkpoint"):
        load_checkpoint(path)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(UserError, match="no 'model' entry"):
        load_checkpoint(tmp_path / "list.pt")


class _Payload:
    """Unpickling this runs ``os.system``: what a shared run folder's checkpoint could hide."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "note": _Payload(marker)}, tmp_path / "final.pt")
    with pytest.raises(UserError, match=r"final\.pt: not a readable mlbseg checkpoint"):
        load_checkpoint(tmp_path / "final.pt")
    assert not marker.exists()
