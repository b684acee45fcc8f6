import csv

import pytest

from mlbseg.engine.logbook import Logbook
from mlbseg.engine.run_dir import open_run_dir
from mlbseg.errors import UserError


def test_csv_is_rewritten_from_history_with_all_columns(tmp_path):
    book = Logbook(tmp_path, history=[{"epoch": 1, "loss": 0.5}], purge_step=None)
    book.end_epoch({"epoch": 2, "loss": 0.4, "alpha_mean": 0.1})
    book.close()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert rows[0]["alpha_mean"] == ""
    assert rows[1]["alpha_mean"] == "0.1"
    assert any((tmp_path / "tensorboard").iterdir())


def test_fresh_run_creates_the_folder_and_refuses_reuse(tmp_path):
    run = tmp_path / "run"
    assert open_run_dir(run, resume=False) is None
    assert (run / "checkpoints").is_dir()
    (run / "config.yaml").write_text("name: x\n")
    with pytest.raises(UserError, match="use --resume"):
        open_run_dir(run, resume=False)


def test_resume_needs_a_checkpoint_and_bad_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        open_run_dir(tmp_path, resume=True)
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"x")
    assert open_run_dir(tmp_path, resume=True) == tmp_path / "checkpoints" / "last.pt"
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create the run folder"):
        open_run_dir(blocker / "run", resume=False)
