"""`mlbseg prepare --val N --noise-model reference` through the CLI: manifest, summary, one-line errors."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from mlbseg.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    """Fourteen small phantoms: 10 train cases by default, so the default val takes one of them."""
    folder = tmp_path_factory.mktemp("val") / "raw"
    args = [
        "synth",
        str(folder),
        "--cases",
        "14",
        "--seed",
        "2",
        "--in-plane",
        "40",
        "64",
        "--slices",
        "8",
        "12",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return folder


def _prepare(raw, out, *options):
    return runner.invoke(app, ["prepare", str(raw), str(out), "--size", "32", *options])


def test_default_val_and_the_reference_noise_model(raw, tmp_path):
    result = _prepare(raw, tmp_path / "p", "--noise-model", "reference")
    assert result.exit_code == 0, result.output
    assert "Prepared 14 cases (9 train, 1 val, 1 meta, 3 test) at 32²" in result.stdout
    assert "reference model" in result.stdout
    assert "kernel scale c" in result.stdout
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["noise_model"] == "reference"
    assert [len(manifest["split"][name]) for name in ("train", "val", "meta", "test")] == [9, 1, 1, 3]
    (val_id,) = manifest["split"]["val"]
    with np.load(tmp_path / "p" / "cases" / f"{val_id}.npz") as arrays:
        assert sorted(arrays.files) == ["image", "mask", "mask_original"]
    for entry in manifest["noise"].values():
        assert abs(entry["mean_dice"] - entry["target"]) <= 0.02
    again = _prepare(raw, tmp_path / "q", "--noise-model", "reference", "--val", "0")
    assert again.exit_code == 0, again.output
    second = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert second["split"]["val"] == []
    assert sorted(second["split"]["train"]) == sorted(manifest["split"]["train"] + [val_id])
    assert second["split"]["meta"] == manifest["split"]["meta"]
    assert second["split"]["test"] == manifest["split"]["test"]


def _assert_one_line_error(result, expected):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ")
    assert expected in lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--noise-model", "paper"], "--noise-model paper: choose one of relative, reference"),
        (["--val", "11"], "--val 11: only 10 train case(s) have a reference mask (val needs one)"),
        (["--val", "10"], "at least one of the 10 train cases must be left to train"),
        (["--split", "paper", "--val", "2"], "--split paper needs PROMISE12 cases Case00–Case49"),
    ],
)
def test_bad_options_are_one_line_and_leave_nothing(raw, tmp_path, options, expected):
    _assert_one_line_error(_prepare(raw, tmp_path / "p", *options), expected)
    assert list(tmp_path.iterdir()) == []


def test_a_split_file_lists_its_own_val(raw, tmp_path):
    split = tmp_path / "split.yaml"
    split.write_text("train: [Case00, Case01]\nval: [Case02]\nmeta: [Case03]\ntest: [Case04]\n")
    result = _prepare(raw, tmp_path / "p", "--split", str(split))
    assert result.exit_code == 0, result.output
    assert "Prepared 5 cases (2 train, 1 val, 1 meta, 1 test)" in result.stdout
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["split"]["val"] == ["Case02"]
    assert manifest["cases"]["Case02"]["split"] == "val"
    _assert_one_line_error(
        _prepare(raw, tmp_path / "q", "--split", str(split), "--val", "1"),
        "--val sets the val count of --split random or paper",
    )
    split.write_text("train: [Case00, Case01]\nval: [Case01]\nmeta: [Case03]\ntest: [Case04]\n")
    _assert_one_line_error(_prepare(raw, tmp_path / "q", "--split", str(split)), "listed more than once")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "split.yaml"]
