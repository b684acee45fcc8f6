"""`mlbseg figure methods`: one row per run on a test case at original resolution, as evaluated."""

import xml.etree.ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

from mlbseg.cli import app
from mlbseg.errors import UserError
from mlbseg.evaluation.metrics import volume_dice
from mlbseg.figures.overlay import draw_method_overlays
from mlbseg.run_figures import write_method_overlays

from ._prepared import ORIGINAL_HW
from .test_multiclass_eval import write_zones_prepared, write_zones_run, zones, zones_model

runner = CliRunner()


@pytest.fixture
def two_runs(tmp_path):
    """Runs predicting PZ everywhere and background everywhere, on one zones dataset."""
    prepared = tmp_path / "prepared"
    manifest, _ = write_zones_prepared(prepared)
    everything = write_zones_run(tmp_path / "pz", prepared, manifest, zones_model(bias=[0.0, 3.0, 0.0]))
    nothing = write_zones_run(tmp_path / "bg", prepared, manifest, zones_model(bias=[3.0, 0.0, 0.0]))
    return everything, nothing, prepared


def test_rows_are_methods_and_columns_the_same_slices():
    reference = zones(ORIGINAL_HW, 3)
    image = np.random.default_rng(0).random(reference.shape)
    predictions = {"all PZ": np.ones_like(reference), "exact": reference.copy()}
    figure = draw_method_overlays(image, reference, predictions, slices=[1, 2], class_names=["PZ", "TZ"])
    assert len(figure.axes) == 4
    top, bottom = figure.axes[:2], figure.axes[2:]
    assert [ax.texts[0].get_text() for ax in (top[0], bottom[0])] == ["all PZ", "exact"]
    assert [ax.get_title() for ax in top] == [
        f"slice {k}, Dice {_mean_dice(np.ones_like(reference[k]), reference[k]):.3f}" for k in (1, 2)
    ]
    assert [ax.get_title() for ax in bottom] == ["slice 1, Dice 1.000", "slice 2, Dice 1.000"]
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == ["PZ", "TZ", "Reference", "Prediction"]


def _mean_dice(prediction, reference):
    return np.mean([volume_dice(prediction[None] == k, reference[None] == k) for k in (1, 2)])


def test_the_command_draws_the_runs_at_original_resolution(two_runs, tmp_path):
    everything, nothing, _ = two_runs
    out = tmp_path / "methods.svg"
    args = ["figure", "methods", str(everything), str(nothing), "--out", str(out), "--case", "Case01"]
    result = runner.invoke(app, [*args, "--label", "all PZ,background", "--slices", "1"])
    assert result.exit_code == 0, result.output
    assert ET.parse(out).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    svg = out.read_text()
    assert "all PZ" in svg  # the row names are in the figure
    assert "background" in svg
    assert "Case01 (test), original resolution" in svg


def test_mismatched_runs_and_bad_choices_are_refused_before_drawing(two_runs, tmp_path):
    everything, nothing, _ = two_runs
    other_prepared = tmp_path / "other"
    manifest, _ = write_zones_prepared(other_prepared)
    elsewhere = write_zones_run(
        tmp_path / "elsewhere", other_prepared, manifest, zones_model(bias=[0.0, 3.0, 0.0])
    )
    out = tmp_path / "m.png"
    with pytest.raises(UserError, match="different prepared datasets"):
        write_method_overlays([everything, elsewhere], out)
    with pytest.raises(UserError, match="--case: Case00 is not a test case"):
        write_method_overlays([everything, nothing], out, case="Case00")
    with pytest.raises(UserError, match="1 name"):
        write_method_overlays([everything, nothing], out, names=["one"])
    with pytest.raises(UserError, match="out of range"):
        write_method_overlays([everything], out, slices=[99])
    with pytest.raises(UserError, match="a figure is written as"):
        write_method_overlays([everything], tmp_path / "m.gif")
    assert not out.exists()
