"""`mlbseg demo` end to end: the whole path at toy size, continuing a finished demo, refusals, the claim."""

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mlbseg.cli import app

runner = CliRunner()
# Toy training so the whole path takes seconds; the data options stay the CLI's.
TOY = [
    "model.decoder_channels=[16,16,16,16]",
    "train.epochs=2",
    "train.steps_per_epoch=2",
    "train.batch_size=2",
    "method.warmup_epochs=1",
    "method.views.zoom_pads=[2,4]",
]


def _demo(out, *args, toy=True):
    sets = [item for override in TOY for item in ("--set", override)] if toy else []
    return runner.invoke(app, ["demo", "--out", str(out), *map(str, args), *sets, "--jobs", "1"])


@pytest.fixture(scope="module")
def toy_demo(tmp_path_factory):
    """A finished toy demo (6 cases at 32², seeds 0 and 1) and its CLI output."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = _demo(out, "--cases", 6, "--size", 32, "--seeds", "0..1")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_demo_writes_data_runs_figures_and_a_repeat_format_table(toy_demo):
    out, output = toy_demo
    manifest = json.loads((out / "prepared" / "manifest.json").read_text())
    assert {name: len(ids) for name, ids in manifest["split"].items()} == {"train": 3, "meta": 1, "test": 2}
    assert manifest["slice_size"] == 32
    table = json.loads((out / "table.json").read_text())
    assert table["task"] == "seg"
    rows = {row["method"]: row for row in table["rows"]}
    assert set(rows) == {"baseline", "mlbseg"}
    for method, row in rows.items():
        assert (row["noise"], row["n"], row["failed"]) == ("L1", 2, 0)
        dices = []
        for seed in (0, 1):
            summary = json.loads((out / f"{method}-L1-seed{seed}" / "summary.json").read_text())
            assert (summary["method"], summary["noise"], summary["seed"]) == (method, "L1", seed)
            dices.append(100 * summary["mean"]["dice"]["mean"])
        assert row["dice_mean"] == pytest.approx(np.mean(dices))
        assert row["dice_std"] == pytest.approx(np.std(dices, ddof=1))
    assert {run["status"] for run in table["runs"]} == {"finished"}
    assert (out / "table.md").read_text().count("| L1 |") == 2
    for name in ("overlay_baseline.png", "overlay_mlbseg.png", "weights.png", "curves.png"):
        with Image.open(out / "figures" / name) as image:
            assert min(image.size) > 200
    assert "[7/7]" in output
    assert "demo finished" in output


def test_overlay_draws_the_reference_and_the_noisy_label(toy_demo):
    # the toy model's prediction may be empty after four steps; its contour colour is not asserted
    out, _ = toy_demo
    pixels = np.asarray(Image.open(out / "figures" / "overlay_mlbseg.png").convert("RGB")).reshape(-1, 3)
    colours = {tuple(int(v) for v in p) for p in np.unique(pixels, axis=0)}
    assert (255, 0, 0) in colours or any(r > 200 and g < 60 and b < 60 for r, g, b in colours)  # red
    assert any(r > 200 and g > 200 and b < 60 for r, g, b in colours)  # yellow


def test_a_rerun_reuses_every_finished_stage(toy_demo):
    out, _ = toy_demo
    stamps = {path: path.stat().st_mtime_ns for path in out.glob("*/checkpoints/final.pt")}
    result = _demo(out, "--cases", 6, "--size", 32, "--seeds", "0..1")
    assert result.exit_code == 0, result.output
    assert result.output.count("finished earlier") == 4
    assert {path: path.stat().st_mtime_ns for path in out.glob("*/checkpoints/final.pt")} == stamps
    assert {run["status"] for run in json.loads((out / "table.json").read_text())["runs"]} == {"skipped"}


def test_other_data_options_in_the_same_folder_are_refused(toy_demo):
    out, _ = toy_demo
    before = sorted(path.name for path in out.iterdir())
    result = _demo(out, "--cases", 8, "--size", 32)
    assert result.exit_code == 2
    assert "made with other options" in result.output
    assert sorted(path.name for path in out.iterdir()) == before


def test_a_folder_that_is_not_a_demo_is_left_alone(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    result = _demo(tmp_path, "--overwrite")
    assert result.exit_code == 2
    assert "is not a demo folder" in result.output
    assert (tmp_path / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "optim.lrr=0.1"], "did you mean 'optim.lr'"),
        (["--set", "train.seed=3"], "the demo sets train.seed itself (use --seeds)"),
        (["--set", "method.name=l2rw"], "the demo sets method.name itself"),
        (["--size", "16"], "method.views.zoom_pads"),
        (["--seeds", "2..1"], "empty range"),
    ],
)
def test_bad_options_stop_before_anything_is_written(tmp_path, args, message):
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--out", str(out), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_a_run_folder_of_another_experiment_is_refused(toy_demo):
    out, _ = toy_demo
    result = _demo(out, "--cases", 6, "--size", 32, "--seeds", "0..1", "--set", "optim.lr=0.2")
    assert result.exit_code == 2
    assert "holds a different experiment (optim.lr differ)" in result.output


@pytest.mark.slow
def test_the_demo_as_shipped_has_mlbseg_beat_the_baseline(tmp_path):
    """The README's claim at seed 0, full demo settings (about 6 minutes on 2 cores)."""
    out = tmp_path / "demo"
    result = _demo(out, toy=False)
    assert result.exit_code == 0, result.output
    rows = {row["method"]: row for row in json.loads((out / "table.json").read_text())["rows"]}
    assert rows["baseline"]["dice_mean"] > 30.0  # the baseline learns the gland, from noisy labels
    assert rows["mlbseg"]["dice_mean"] > rows["baseline"]["dice_mean"] + 3.0
