"""`mlbseg synth --zones --rater` + `mlbseg prepare --noisy-labels` through the CLI: three classes, two
channels, a rater folder, a train case without a reference, and one-line errors."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from mlbseg.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def zones(tmp_path_factory):
    root = tmp_path_factory.mktemp("own")
    args = ["synth", str(root / "raw"), "--zones", "--rater", str(root / "rater2"), "--cases", "6"]
    result = runner.invoke(app, [*args, "--in-plane", "96", "96", "--slices", "8", "10", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert "second rater's masks" in result.stdout
    return root


def test_zones_with_a_rater_and_a_case_without_reference(zones, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(zones / "raw", raw)
    (raw / "labelsTr" / "case_005.nii.gz").unlink()  # only the rater annotated case_005
    spec = json.loads((raw / "dataset.json").read_text())
    out = tmp_path / "prepared"
    args = ["prepare", str(raw), str(out), "--size", "32", "--channels", "0,1", "--meta", "1", "--test", "1"]
    result = runner.invoke(app, [*args, "--noisy-labels", str(zones / "rater2")])
    assert result.exit_code == 0, result.output
    assert (
        "Prepared 6 cases (4 train, 0 val, 1 meta, 1 test; 1 train case(s) without a reference)"
        in result.stdout
    )
    assert "rater2" in result.stdout
    assert "PZ " in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert spec["labels"] == manifest["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert manifest["channel_names"] == ["T2", "ADC"]
    assert manifest["cases"]["case_005"]["split"] == "train"
    assert manifest["annotations"]["rater2"]["num_cases"] == 6
    assert 0.5 < manifest["annotations"]["rater2"]["mean_dice"] < 0.99
    for entry in manifest["noise"].values():
        assert abs(entry["mean_dice"] - entry["target"]) <= 0.02
        assert set(entry["strength"]) == {"PZ", "TZ"}


def _one_line(result, expected):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]


def test_bad_options_and_annotations_are_one_line_errors(zones, tmp_path):
    raw, rater = zones / "raw", tmp_path / "rater2"
    shutil.copytree(zones / "rater2", rater)
    shutil.copy(rater / "case_000.nii.gz", rater / "case_099.nii.gz")
    prepare = ["prepare", str(raw), str(tmp_path / "p")]
    _one_line(
        runner.invoke(app, [*prepare, "--noisy-labels", str(rater)]), "case_099.nii.gz: no case of the raw"
    )
    _one_line(runner.invoke(app, [*prepare, "--channels", "0,x"]), "--channels 0,x: expected channel indices")
    _one_line(runner.invoke(app, [*prepare, "--binary", "--labels", "keep"]), "--binary means --labels merge")
    _one_line(runner.invoke(app, [*prepare, "--meta", "5", "--test", "1"]), "only 6 case(s) have a reference")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rater2"]


def test_export_nnunet_writes_the_chosen_labels_and_refuses_an_existing_folder(zones, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(zones / "raw", raw)
    (raw / "labelsTr" / "case_005.nii.gz").unlink()  # a train case the rater alone annotated
    prepared = tmp_path / "prepared"
    args = ["prepare", str(raw), str(prepared), "--size", "32", "--meta", "1", "--test", "1"]
    assert runner.invoke(app, [*args, "--noisy-labels", str(zones / "rater2")]).exit_code == 0
    out = tmp_path / "Dataset501_Rater2"
    result = runner.invoke(app, ["export", "nnunet", str(prepared), str(out), "--noise", "rater2"])
    assert result.exit_code == 0, result.output
    assert "4 train + 1 meta cases in labelsTr, 1 test cases in imagesTs" in result.stdout
    spec = json.loads((out / "dataset.json").read_text())
    assert spec["numTraining"] == len(list((out / "labelsTr").iterdir())) == 5
    assert spec["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    result = runner.invoke(app, ["export", "nnunet", str(prepared), str(tmp_path / "l2"), "--noise", "L2"])
    assert result.exit_code == 0, result.output
    assert "1 train case(s) without L2 labels left out" in result.stdout  # case_005 has no reference
    again = runner.invoke(app, ["export", "nnunet", str(prepared), str(out), "--noise", "rater2"])
    assert again.exit_code == 2
    assert "already exists; pass --overwrite" in again.output
    unknown = runner.invoke(app, ["export", "nnunet", str(prepared), str(tmp_path / "x"), "--noise", "L7"])
    assert unknown.exit_code == 2
    assert "--noise L7: choose one of" in unknown.output
    assert not (tmp_path / "x").exists()
