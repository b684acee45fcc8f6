"""`mlbseg demo` end to end: the whole path at toy size, continuing, refusals, the claim, signals."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from mlbseg.cli import app
from mlbseg.demo import _replacing
from mlbseg.repeat.plan import EVALUATE, FINISHED, run_state

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


def _popen_demo(out, *args):
    """The toy demo (6 cases at 32²) as its own process, for signals."""
    sets = [item for override in TOY for item in ("--set", override)]
    command = [sys.executable, "-m", "mlbseg", "demo", "--out", str(out), "--cases", "6", "--size", "32"]
    command += [*map(str, args), *sets, "--jobs", "1"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _interrupt_when(proc, ready, signum=signal.SIGTERM, seconds=120):
    """Send ``signum`` once ``ready()`` holds; return the exit code and stderr. The process never outlives."""
    try:
        deadline = time.monotonic() + seconds
        while not ready():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, stderr.decode()


def _files(folder):
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


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
    assert {name: len(ids) for name, ids in manifest["split"].items()} == {
        "train": 3,
        "val": 0,
        "meta": 1,
        "test": 2,
    }
    assert manifest["slice_size"] == 32
    table = json.loads((out / "table.json").read_text())
    assert table["task"] == "seg"
    rows = {row["method"]: row for row in table["rows"]}
    assert set(rows) == {"baseline", "views_meta", "mlbseg"}
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
    assert (out / "table.md").read_text().count("| L1 |") == 3
    cases = (out / "cases.csv").read_text().splitlines()
    assert len(cases) == 1 + 3 * 2 * 2  # header, (method, seed, test case)
    stats = json.loads((out / "stats.json").read_text())["comparisons"]["dice"]
    compared = {(c["method"], c["reference"]) for c in stats}
    assert {("mlbseg", "baseline"), ("mlbseg", "views_meta"), ("views_meta", "baseline")} <= compared
    assert all(c["pairs"] == 4 for c in stats)  # 2 seeds × 2 test cases
    assert "against views_meta" in (out / "stats.md").read_text()
    figures = ["weights.png", "curves.png", "methods.png", "compare_dice.png"]
    for name in [f"overlay_{method}.png" for method in rows] + figures:
        with Image.open(out / "figures" / name) as image:
            assert min(image.size) > 200
    assert "[9/9]" in output
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
    assert result.output.count("finished earlier") == 6
    assert {path: path.stat().st_mtime_ns for path in out.glob("*/checkpoints/final.pt")} == stamps
    assert {run["status"] for run in json.loads((out / "table.json").read_text())["runs"]} == {"skipped"}


def test_evaluate_replaces_the_derived_summary_and_a_rerun_would_evaluate_final_again(toy_demo):
    out, _ = toy_demo
    run_dir = out / "baseline-L1-seed1"
    summary = run_dir / "summary.json"
    final = json.loads(summary.read_text())
    try:
        result = runner.invoke(app, ["evaluate", str(run_dir), "--checkpoint", "last"])
        assert result.exit_code == 0, result.output
        assert json.loads(summary.read_text())["checkpoint"] == "last"  # replaced, and it says so
        assert run_state(run_dir) == EVALUATE  # not the run's result: demo and repeat evaluate final
    finally:
        result = runner.invoke(app, ["evaluate", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert json.loads(summary.read_text()) == final  # the same checkpoint and data: the same summary
    assert run_state(run_dir) == FINISHED


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


CONTINUE = (
    "interrupted; continue with the same command (finished stages are reused, an interrupted run resumes)\n"
)


def test_sigterm_stops_the_stage_in_progress_with_one_line(tmp_path):
    out = tmp_path / "demo"
    code, stderr = _interrupt_when(_popen_demo(out), lambda: any(out.glob(".prepared.*.tmp")))
    assert (code, stderr) == (143, CONTINUE)
    assert sorted(path.name for path in out.iterdir()) == ["demo.json", "raw", "split.yaml"]  # raw is done


@pytest.mark.slow
def test_an_interrupted_demo_continues_where_it_stopped(tmp_path):
    out = tmp_path / "demo"
    run_dir = out / "baseline-L1-seed0"
    victim = _popen_demo(out)
    code, stderr = _interrupt_when(victim, (run_dir / "checkpoints" / "last.pt").exists)  # in epoch 2
    assert (code, stderr) == (143, CONTINUE)
    assert not (run_dir / "checkpoints" / "final.pt").exists()
    assert not list(out.rglob("*.tmp"))
    kept = {
        path: path.stat().st_mtime_ns
        for path in (out / "prepared" / "manifest.json", run_dir / "config.yaml")
    }
    result = _demo(out, "--cases", 6, "--size", 32)
    assert result.exit_code == 0, result.output
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # data reused, the run resumed
    epochs = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == ["1", "2"]


@pytest.mark.slow
def test_an_interrupted_overwrite_leaves_the_earlier_demo_intact(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "demo.json").write_text('{"cases": 8}\n')
    (out / "table.md").write_text("the earlier results\n")
    earlier = _files(out)

    def building_the_new_one():
        return any(tmp_path.glob(".demo.*.old")) and (out / "demo.json").exists()

    code, stderr = _interrupt_when(_popen_demo(out, "--overwrite"), building_the_new_one, signal.SIGINT)
    assert (code, stderr) == (130, "interrupted; continue with the same command\n")
    assert _files(out) == earlier
    assert sorted(tmp_path.iterdir()) == [out]  # no aside or staging folder left


def _fail_while_replacing(out):
    with _replacing(out, Console(quiet=True)):
        (out / "half.txt").write_text("half")
        raise RuntimeError("the new demo failed")


def test_an_overwrite_replaces_the_earlier_demo_only_when_the_new_one_is_complete(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "old.txt").write_text("earlier")
    with _replacing(out, Console(quiet=True)):
        assert sorted(path.name for path in out.iterdir()) == []  # the new one starts empty
        (aside,) = tmp_path.glob(".demo.*.old")
        assert (aside / "demo" / "old.txt").read_text() == "earlier"
        (out / "new.txt").write_text("new")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo"]
    assert sorted(path.name for path in out.iterdir()) == ["new.txt"]
    with pytest.raises(RuntimeError, match="the new demo failed"):
        _fail_while_replacing(out)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["demo"]
    assert sorted(path.name for path in out.iterdir()) == ["new.txt"]


@pytest.mark.slow
def test_the_demo_as_shipped_has_mlbseg_beat_the_baseline(tmp_path):
    """The README's claim at seed 0, full demo settings (about 7 minutes on 2 cores)."""
    out = tmp_path / "demo"
    result = _demo(out, toy=False)
    assert result.exit_code == 0, result.output
    rows = {row["method"]: row for row in json.loads((out / "table.json").read_text())["rows"]}
    assert rows["baseline"]["dice_mean"] > 30.0  # the baseline learns the gland, from noisy labels
    assert rows["mlbseg"]["dice_mean"] > rows["baseline"]["dice_mean"] + 3.0
    assert rows["views_meta"]["dice_mean"] > rows["baseline"]["dice_mean"] + 3.0


@pytest.mark.slow  # the default tier runs K = 3 end to end in the README's API doctest
def test_the_zones_variant_runs_the_path_with_three_classes(tmp_path):
    out = tmp_path / "zones"
    result = _demo(out, "--zones", "--cases", 6, "--size", 32, "--seeds", "0")
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "prepared" / "manifest.json").read_text())
    assert manifest["layout"] == "nnunet"
    assert manifest["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert manifest["channels"] == [0, 1]
    summary = json.loads((out / "mlbseg-L1-seed0" / "summary.json").read_text())
    assert sorted(summary["mean"]["classes"]) == ["PZ", "TZ"]
    columns = next(iter(json.loads((out / "table.json").read_text())["rows"]))
    assert {"dice_PZ_mean", "dice_TZ_mean"} <= set(columns)
    assert "PZ Dice (%)" in (out / "table.md").read_text()
    assert (out / "figures" / "overlay_mlbseg.png").is_file()
    assert json.loads((out / "demo.json").read_text())["zones"] is True
