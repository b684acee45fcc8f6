"""`mlbseg figure compare REPEAT_DIR`: per-case boxes of a repeat's runs, read from their summary.json."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from typer.testing import CliRunner

from mlbseg.cli import app
from mlbseg.errors import UserError
from mlbseg.figures.compare import draw_compare
from mlbseg.run_figures import repeat_case_values

runner = CliRunner()
CASES = ["Case01", "Case02", "Case03"]


def _summary(method: str, noise: str, seed: int, checkpoint: str = "final") -> dict:
    rng = np.random.default_rng(seed)
    cases = {case: {"dice": float(rng.uniform(0.5, 0.9)), "hd95": float(rng.uniform(2, 9))} for case in CASES}
    if method == "baseline" and seed == 1:
        cases["Case02"]["hd95"] = None  # an empty prediction
    return {"method": method, "noise": noise, "seed": seed, "checkpoint": checkpoint, "cases": cases}


@pytest.fixture
def repeat_dir(tmp_path):
    folder = tmp_path / "repeat"
    for method in ("mlbseg", "baseline"):
        for seed in (0, 1):
            run = folder / f"{method}-L1-seed{seed}"
            run.mkdir(parents=True)
            (run / "summary.json").write_text(json.dumps(_summary(method, "L1", seed)))
    stale = folder / "mlbseg-L2-seed0"  # evaluated on `last` only: not a repeat result
    stale.mkdir()
    (stale / "summary.json").write_text(json.dumps(_summary("mlbseg", "L2", 0, checkpoint="last")))
    return folder


def test_values_are_gathered_per_noise_and_method_in_registry_order(repeat_dir):
    values = repeat_case_values(repeat_dir, "hd95")
    assert list(values) == ["L1"]
    assert list(values["L1"]) == ["baseline", "mlbseg"]  # baseline first, as METHODS lists it
    assert len(values["L1"]["mlbseg"]) == 2 * len(CASES)
    assert values["L1"]["baseline"].count(float("inf")) == 1


def test_one_box_and_one_point_per_seed_and_case(repeat_dir):
    figure = draw_compare(repeat_case_values(repeat_dir, "dice"), "dice")
    (ax,) = figure.axes
    assert [tick.get_text() for tick in ax.get_xticklabels()] == ["baseline", "mlbseg"]
    assert ax.get_ylabel() == "Dice (%)"
    points = [collection.get_offsets() for collection in ax.collections]
    assert [len(p) for p in points] == [6, 6]
    expected = sorted(100 * _summary("mlbseg", "L1", s)["cases"][c]["dice"] for s in (0, 1) for c in CASES)
    np.testing.assert_allclose(sorted(points[1][:, 1]), expected)
    hd95 = draw_compare(repeat_case_values(repeat_dir, "hd95"), "hd95").axes[0]
    assert "1 non-finite left out" in hd95.get_title()


def test_the_command_writes_svg_and_refuses_what_it_cannot_draw(repeat_dir, tmp_path):
    out = tmp_path / "compare.svg"
    result = runner.invoke(app, ["figure", "compare", str(repeat_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert ET.parse(out).getroot().tag == "{http://www.w3.org/2000/svg}svg"
    for args, message in [
        ([str(repeat_dir), "--out", str(tmp_path / "c.jpg")], "c.jpg: a figure is written as"),
        ([str(repeat_dir), "--metric", "iou"], "--metric iou: choose one of dice, hd95"),
        ([str(tmp_path / "none")], "no such folder"),
        ([str(repeat_dir), "--out", str(out)], "already exists"),
    ]:
        result = runner.invoke(app, ["figure", "compare", *args])
        assert result.exit_code == 2
        assert message in result.output
    with pytest.raises(UserError, match=r"no segmentation run with a final summary\.json"):
        repeat_case_values(tmp_path, "dice")


def test_curves_take_one_label_per_run(tmp_path):
    runs = []
    for index in range(3):
        run = tmp_path / f"run{index}"
        run.mkdir()
        (run / "metrics.csv").write_text(f"epoch,loss\n0,{1 + index}\n1,{0.5 + index}\n")
        runs.append(str(run))
    out = tmp_path / "curves.pdf"
    result = runner.invoke(
        app, ["figure", "curves", *runs, "--label", "a,a,b", "--metrics", "loss", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"%PDF-")
    result = runner.invoke(
        app, ["figure", "curves", *runs, "--label", "a,b", "--out", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 2
    assert "--label: 2 label(s) for 3 run(s)" in result.output
