import numpy as np
import pytest
from PIL import Image

from mlbseg.errors import UserError
from mlbseg.figures.curves import LEGEND_INCHES, curves_figure, draw_curves, read_metrics_csv


@pytest.fixture
def runs(tmp_path):
    baseline = tmp_path / "baseline.csv"
    baseline.write_text("epoch,train_loss,val_dice\n0,0.9,\n1,0.7,0.5\n2,0.6,\n3,0.5,0.6\n")
    mlbseg = tmp_path / "mlbseg.csv"
    mlbseg.write_text("epoch,train_loss,val_dice,lr\n0,0.8,0.55,0.005\n1,0.6,0.7,0.005\n")
    return {"baseline": [read_metrics_csv(baseline)], "mlbseg": [read_metrics_csv(mlbseg)]}


def test_read_metrics_csv_parses_numbers_and_skips_empty_cells(runs):
    (baseline,), (mlbseg,) = runs["baseline"], runs["mlbseg"]
    assert baseline[0] == {"epoch": 0.0, "train_loss": 0.9}
    assert baseline[1] == {"epoch": 1.0, "train_loss": 0.7, "val_dice": 0.5}
    assert len(mlbseg) == 2
    assert mlbseg[1]["lr"] == 0.005


def test_read_metrics_csv_reports_bad_files(tmp_path):
    with pytest.raises(UserError, match=r"nope\.csv: no such file"):
        read_metrics_csv(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(UserError, match=r"empty\.csv: empty file"):
        read_metrics_csv(tmp_path / "empty.csv")
    (tmp_path / "bad.csv").write_text("epoch,train_loss\n0,0.5\n1,oops\n")
    with pytest.raises(UserError, match=r"bad\.csv: line 3, column 'train_loss': 'oops'"):
        read_metrics_csv(tmp_path / "bad.csv")


def test_one_panel_per_metric_and_one_line_per_run(runs):
    figure = draw_curves(runs, ("train_loss", "val_dice"))
    loss_ax, dice_ax = figure.axes
    assert loss_ax.get_ylabel() == "train loss"
    assert dice_ax.get_xlabel() == "epoch"
    baseline_dice, mlbseg_dice = dice_ax.get_lines()
    np.testing.assert_array_equal(baseline_dice.get_xdata(), [1, 3])
    np.testing.assert_array_equal(baseline_dice.get_ydata(), [0.5, 0.6])
    np.testing.assert_array_equal(mlbseg_dice.get_ydata(), [0.55, 0.7])
    assert len(loss_ax.get_lines()) == 2
    assert [line.get_color() for line in loss_ax.get_lines()] == [
        line.get_color() for line in dice_ax.get_lines()
    ]
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["baseline", "mlbseg"]


def test_unknown_metric_lists_the_columns(runs):
    with pytest.raises(UserError, match=r"'val_dcie'.*\['lr', 'train_loss', 'val_dice'\]"):
        draw_curves(runs, ("val_dcie",))


def test_png_size_and_atomic_write(tmp_path, runs):
    out = curves_figure(
        runs, tmp_path / "figs" / "curves.png", metrics=("train_loss", "val_dice", "lr"), dpi=120
    )
    with Image.open(out) as png:
        assert png.size == (round(3 * 3.5 * 120), round((2.6 + LEGEND_INCHES) * 120))
    assert [p.name for p in out.parent.iterdir()] == ["curves.png"]
    with pytest.raises(UserError, match="overwrite"):
        curves_figure(runs, out, metrics=("train_loss",))


def test_runs_under_one_label_are_drawn_as_mean_and_a_std_band():
    seeds = [
        [{"epoch": 0, "val_dice": 0.5}, {"epoch": 1, "val_dice": 0.6}, {"epoch": 2, "val_dice": 0.7}],
        [{"epoch": 0, "val_dice": 0.3}, {"epoch": 1, "val_dice": 0.8}, {"epoch": 2, "val_dice": 0.9}],
        [{"epoch": 1, "val_dice": 0.7}, {"epoch": 2, "val_dice": 0.8}],  # epoch 0 not logged: left out
    ]
    figure = draw_curves({"mlbseg": seeds, "baseline": [seeds[0]]}, ("val_dice",))
    (ax,) = figure.axes
    mean_line, single_line = ax.get_lines()
    np.testing.assert_array_equal(mean_line.get_xdata(), [1, 2])
    np.testing.assert_allclose(mean_line.get_ydata(), [0.7, 0.8])
    np.testing.assert_array_equal(single_line.get_ydata(), [0.5, 0.6, 0.7])
    (band,) = ax.collections  # the single run has no band
    std = np.std([[0.6, 0.8, 0.7], [0.7, 0.9, 0.8]], axis=1, ddof=1)
    low, high = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
    assert low == pytest.approx(0.7 - std[0])
    assert high == pytest.approx(0.8 + std[1])
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["mlbseg (n=3)", "baseline"]
