import csv

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mlbseg.config import load_config
from mlbseg.engine.lock import run_lock
from mlbseg.engine.logbook import Logbook
from mlbseg.engine.run_dir import LAST, Start, claim_run_dir, inspect_run_dir
from mlbseg.errors import UserError
from mlbseg.seg.config import SegConfig


def test_csv_is_rewritten_from_history_with_all_columns(tmp_path):
    book = Logbook(tmp_path, history=[{"epoch": 1, "loss": 0.5}], purge_step=None)
    book.end_epoch({"epoch": 2, "loss": 0.4, "alpha_mean": 0.1})
    book.close()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert rows[0]["alpha_mean"] == ""
    assert rows[1]["alpha_mean"] == "0.1"
    assert any((tmp_path / "tensorboard").iterdir())


def _claimed(run, start=Start.FRESH):
    cfg = load_config(SegConfig, None)
    with claim_run_dir(run, start, cfg):
        pass
    return cfg


def test_fresh_start_creates_nothing_until_claimed(tmp_path):
    run = tmp_path / "a" / "run"
    assert inspect_run_dir(run, resume=False, overwrite=False) is Start.FRESH
    assert not (tmp_path / "a").exists()
    _claimed(run)
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints").is_dir()


def test_a_start_that_died_before_its_first_checkpoint_never_blocks(tmp_path):
    run = tmp_path / "run"
    _claimed(run)  # config.yaml and an empty checkpoints/ only
    assert inspect_run_dir(run, resume=False, overwrite=False) is Start.FRESH
    assert inspect_run_dir(run, resume=True, overwrite=False) is Start.FRESH


def test_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    run = tmp_path / "run"
    _claimed(run)
    (run / LAST).write_bytes(b"x")
    with pytest.raises(UserError, match="holds a run; use --resume, --overwrite"):
        inspect_run_dir(run, resume=False, overwrite=False)
    assert inspect_run_dir(run, resume=True, overwrite=False) is Start.RESUME
    assert inspect_run_dir(run, resume=False, overwrite=True) is Start.REPLACE
    with pytest.raises(UserError, match="pass one of them"):
        inspect_run_dir(run, resume=True, overwrite=True)


def test_foreign_files_are_refused_and_resume_needs_a_checkpoint(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="exists and is not empty"):
        inspect_run_dir(tmp_path, resume=False, overwrite=False)
    with pytest.raises(UserError, match="nothing to resume"):
        inspect_run_dir(tmp_path, resume=True, overwrite=False)


def test_a_file_as_run_dir_and_an_unwritable_parent_are_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="exists and is not a folder"):
        inspect_run_dir(blocker, resume=False, overwrite=False)
    with pytest.raises(UserError, match="cannot create the run folder"):
        inspect_run_dir(blocker / "run", resume=False, overwrite=False)


def test_overwrite_replaces_the_old_run_only_when_claimed(tmp_path):
    run = tmp_path / "run"
    _claimed(run)
    (run / LAST).write_bytes(b"old")
    assert inspect_run_dir(run, resume=False, overwrite=True) is Start.REPLACE
    assert (run / LAST).read_bytes() == b"old"  # inspecting changes nothing
    _claimed(run, Start.REPLACE)
    assert not (run / LAST).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # the old copy is gone


def test_a_locked_run_is_refused(tmp_path):
    run = tmp_path / "run"
    _claimed(run)
    (run / LAST).write_bytes(b"x")
    with run_lock(run), pytest.raises(UserError, match="another process is training this run"):
        inspect_run_dir(run, resume=True, overwrite=False)
    assert inspect_run_dir(run, resume=True, overwrite=False) is Start.RESUME


def test_resume_with_another_config_is_refused(tmp_path):
    run = tmp_path / "run"
    _claimed(run)
    other = load_config(SegConfig, None, ["optim.lr=0.5"])
    with (
        pytest.raises(UserError, match=r"these keys differ: optim\.lr"),
        claim_run_dir(run, Start.RESUME, other),
    ):
        pass


def test_hparams_record_the_flat_config_and_the_final_metrics_once(tmp_path):
    config = {"name": "run", "optim": {"lr": 0.005, "betas": [0.9, 0.999]}, "model": {"prior": None}}
    row = {"epoch": 3, "loss": 0.25, "meta_dice": 0.8, "val_dice": float("nan")}
    for _ in range(2):  # a run that ends again (resumed after its end) replaces its record
        book = Logbook(tmp_path, history=[], purge_step=None)
        book.hparams(config, row)
        book.close()
    folder = tmp_path / "tensorboard" / "hparams"
    assert len(list(folder.iterdir())) == 1
    events = EventAccumulator(str(folder))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["final/loss", "final/meta_dice"]  # NaN left out
    assert events.Scalars("final/meta_dice")[0].value == pytest.approx(0.8)
    content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert start.hparams["optim.lr"].number_value == pytest.approx(0.005)
    assert start.hparams["optim.betas"].string_value == "[0.9, 0.999]"
    assert start.hparams["name"].string_value == "run"
