"""mlbseg.seg.evaluate: a run's test-case scores in summary.json, from a checkpoint with a known output."""

import json
import os

import numpy as np
import pytest
import torch

from mlbseg.config import to_dict
from mlbseg.engine.checkpoint import save_checkpoint
from mlbseg.errors import UserError
from mlbseg.evaluation.metrics import summarize, volume_dice, volume_hd95
from mlbseg.seg.config import DataConfig, MethodConfig, ModelConfig, SegConfig, TrainConfig
from mlbseg.seg.evaluate import evaluate_run, load_trained_model

from ._prepared import MODEL, ORIGINAL_HW, SPACING, small_model, write_prepared

SPLITS = {"train": ["Case00"], "meta": ["Case02"], "test": ["Case03", "Case01"]}


def _config(prepared) -> SegConfig:
    return SegConfig(
        data=DataConfig(prepared=str(prepared), noise="L3"),
        model=ModelConfig(**MODEL),
        method=MethodConfig(name="l2rw"),
        train=TrainConfig(seed=7, device="cpu"),
    )


def _constant_model(logit: float) -> torch.nn.Module:
    """The run's architecture with every weight zero and head bias ``logit``: that logit at every pixel."""
    model = small_model()
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.segmentation_head[0].bias.fill_(logit)
    return model


def _write_checkpoint(run, cfg, logit, name="final", epoch=3):
    state = {"model": _constant_model(logit).state_dict(), "epoch": epoch, "config": to_dict(cfg)}
    save_checkpoint(state, run / "checkpoints" / f"{name}.pt")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread for these tiny models, restored afterwards (see test_weight_maps.one_thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run(tmp_path):
    """(run, prepared, reference masks by test case): final.pt predicts all foreground, last.pt none."""
    prepared = tmp_path / "prepared"
    arrays = write_prepared(prepared, SPLITS)
    run = tmp_path / "run"
    cfg = _config(prepared)
    _write_checkpoint(run, cfg, logit=2.0, name="final", epoch=3)
    _write_checkpoint(run, cfg, logit=-2.0, name="last", epoch=2)
    return run, prepared, {case: arrays[case]["mask_original"] for case in SPLITS["test"]}


def test_load_trained_model_gives_the_config_and_the_weights_in_eval_mode(run):
    run_dir, prepared, _ = run
    cfg, model, state = load_trained_model(run_dir, "final", torch.device("cpu"))
    assert cfg == _config(prepared)
    assert not model.training
    assert state["epoch"] == 3
    with torch.no_grad():
        logits = model(torch.rand(2, 1, 16, 16))
    assert torch.equal(logits, torch.full((2, 1, 16, 16), 2.0))


def test_summary_holds_the_run_and_the_per_case_and_mean_scores(run):
    run_dir, prepared, references = run
    summary = evaluate_run(run_dir, device="cpu")
    assert list(summary) == [
        "run",
        "checkpoint",
        "epoch",
        "method",
        "noise",
        "seed",
        "prepared",
        "cases",
        "mean",
    ]
    assert summary["run"] == str(run_dir)
    assert summary["checkpoint"] == "final"
    assert (summary["epoch"], summary["method"], summary["noise"], summary["seed"]) == (3, "l2rw", "L3", 7)
    assert summary["prepared"] == str(prepared)
    assert list(summary["cases"]) == ["Case03", "Case01"]  # the manifest's test order
    # The model predicts foreground everywhere: per case, the metrics of an all-ones mask at original size.
    for case, reference in references.items():
        everything = np.ones_like(reference)
        assert summary["cases"][case] == {
            "dice": volume_dice(everything, reference),
            "hd95": volume_hd95(everything, reference, SPACING),
        }
    voxels = 2 * ORIGINAL_HW[0] * ORIGINAL_HW[1]  # Case03: 2 slices, foreground an 8×8 square in slice 1
    assert summary["cases"]["Case03"]["dice"] == pytest.approx(2 * 64 / (voxels + 64), abs=1e-15)
    assert summary["mean"] == summarize(summary["cases"])
    dice = [summary["cases"][case]["dice"] for case in references]
    assert summary["mean"]["dice"] == {"mean": np.mean(dice), "std": np.std(dice), "n": 2, "n_nonfinite": 0}
    assert json.loads((run_dir / "summary.json").read_text()) == summary


def test_failed_cases_are_null_in_json_and_counted_apart_from_the_mean(run):
    run_dir, _, _ = run
    summary = evaluate_run(run_dir, checkpoint="last", device="cpu")  # predicts no foreground at all
    assert summary["checkpoint"] == "last"
    assert summary["epoch"] == 2
    assert summary["cases"] == {case: {"dice": 0.0, "hd95": None} for case in ("Case03", "Case01")}
    assert summary["mean"]["hd95"] == {"mean": None, "std": None, "n": 0, "n_nonfinite": 2}
    assert summary["mean"]["dice"] == {"mean": 0.0, "std": 0.0, "n": 2, "n_nonfinite": 0}
    text = (run_dir / "summary.json").read_text()
    assert "Infinity" not in text
    assert "NaN" not in text
    assert json.loads(text)["cases"]["Case01"]["hd95"] is None


def test_a_checkpoint_path_and_another_prepared_folder_can_be_given(run, tmp_path):
    run_dir, prepared, _ = run
    moved = tmp_path / "moved"
    prepared.rename(moved)
    with pytest.raises(UserError, match="no such folder"):
        evaluate_run(run_dir, device="cpu")  # the config's folder is gone
    path = run_dir / "checkpoints" / "last.pt"
    summary = evaluate_run(run_dir, checkpoint=str(path), prepared=moved, device="cpu")
    assert summary["checkpoint"] == str(path)
    assert summary["prepared"] == str(moved)
    assert summary["cases"]["Case03"]["dice"] == 0.0


def test_summary_is_replaced_atomically_and_no_temporary_file_is_left(run, monkeypatch):
    run_dir, _, _ = run
    evaluate_run(run_dir, checkpoint="last", device="cpu")
    assert sorted(path.name for path in run_dir.iterdir()) == ["checkpoints", "summary.json"]
    before = (run_dir / "summary.json").read_text()

    def refuse(source, target):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)  # the rename that publishes the new summary fails
    with pytest.raises(OSError, match="disk full"):
        evaluate_run(run_dir, checkpoint="final", device="cpu")
    assert (run_dir / "summary.json").read_text() == before  # the previous summary is intact
    assert sorted(path.name for path in run_dir.iterdir()) == ["checkpoints", "summary.json"]
    monkeypatch.undo()
    evaluate_run(run_dir, checkpoint="final", device="cpu")
    assert json.loads((run_dir / "summary.json").read_text())["checkpoint"] == "final"
    assert sorted(path.name for path in run_dir.iterdir()) == ["checkpoints", "summary.json"]


def test_a_missing_run_or_weights_that_do_not_fit_are_user_errors(run, tmp_path):
    run_dir, prepared, _ = run
    with pytest.raises(UserError, match="run folder not found"):
        evaluate_run(tmp_path / "nowhere", device="cpu")
    with pytest.raises(UserError, match="checkpoint not found"):
        evaluate_run(run_dir, checkpoint=str(tmp_path / "missing.pt"), device="cpu")
    other = small_model(decoder_channels=(16, 8, 8))
    save_checkpoint(
        {"model": other.state_dict(), "config": to_dict(_config(prepared))}, tmp_path / "other.pt"
    )
    with pytest.raises(UserError, match="weights do not fit the run's model config"):
        evaluate_run(run_dir, checkpoint=str(tmp_path / "other.pt"), device="cpu")
    assert not (run_dir / "summary.json").exists()
