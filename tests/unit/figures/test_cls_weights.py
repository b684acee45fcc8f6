import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mlbseg.cli.figure import app
from mlbseg.cls.step import StepOutput, WeightLog
from mlbseg.errors import UserError
from mlbseg.figures.cls_weights import (
    ALPHA_COLOR,
    BETA_COLOR,
    cls_weights_figure,
    draw_cls_weights,
    group_masks,
    load_weight_log,
)

runner = CliRunner()
K = 10


def _write_log(run_dir, epoch, clean, noisy, pseudo, alpha, beta, tracked=None):
    """Save a weight log through WeightLog itself (one step over all samples), as a run would."""
    clean, noisy = np.asarray(clean), np.asarray(noisy)
    tracked = np.arange(len(noisy)) if tracked is None else np.asarray(tracked)
    log = WeightLog(tracked, noisy, clean, torch.device("cpu"))
    logits = torch.nn.functional.one_hot(torch.as_tensor(pseudo), K).float()  # argmax = pseudo
    beta = None if beta is None else torch.as_tensor(beta, dtype=torch.float32)
    out = StepOutput(torch.zeros(()), logits, torch.as_tensor(alpha, dtype=torch.float32), beta)
    log.record(torch.arange(len(noisy)), out)
    log.save(run_dir / "weights" / f"epoch_{epoch:03d}.npz")


@pytest.fixture
def run_dir(tmp_path):
    """12 samples: 0-3 pseudo = clean ≠ noisy (β ≫ α), 4-9 pseudo = noisy (α ≈ β), 10-11 other."""
    clean = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1, 2])
    noisy = np.array([0, 0, 0, 0, 5, 6, 7, 8, 3, 4, 5, 6])  # 8, 9 noisy and memorised
    pseudo = np.array([1, 2, 3, 4, 5, 6, 7, 8, 3, 4, 9, 9])
    alpha = np.where(np.arange(12) < 4, 1e-6, 2e-4)
    beta = np.where(np.arange(12) < 4, 4e-4, 2e-4)
    _write_log(tmp_path, 2, clean, noisy, pseudo, alpha, beta)
    _write_log(tmp_path, 5, clean, noisy, pseudo, alpha, beta)
    return tmp_path


def _has(rgb, hex_colour, tolerance=30):
    colour = np.array([int(hex_colour[i : i + 2], 16) for i in (1, 3, 5)])
    return bool((np.abs(rgb - colour).sum(axis=-1) < tolerance).any())


def test_log_written_by_weightlog_loads_and_splits_into_groups(run_dir):
    epoch, log = load_weight_log(run_dir)
    assert epoch == 5
    assert log["index"].tolist() == list(range(12))
    masks = group_masks(log)
    assert np.flatnonzero(masks["corrected"]).tolist() == [0, 1, 2, 3]
    assert np.flatnonzero(masks["agree"]).tolist() == [4, 5, 6, 7, 8, 9]
    assert np.flatnonzero(masks["other"]).tolist() == [10, 11]
    assert load_weight_log(run_dir, "2")[0] == 2


def test_bars_show_alpha_and_beta_per_sample_and_group_means(run_dir):
    _, log = load_weight_log(run_dir)
    figure = draw_cls_weights(log, count=3, epoch=5)
    left, right, means = figure.axes
    assert len(left.patches) == 2 * 3  # α and β bars of the first 3 corrected samples
    assert [t.get_text() for t in left.get_xticklabels()] == ["#0\n0→1", "#1\n0→2", "#2\n0→3"]
    heights = np.array([p.get_height() for p in left.patches])
    np.testing.assert_allclose(heights, [1e-6] * 3 + [4e-4] * 3, rtol=1e-6)
    assert "(3 of 4)" in left.get_title()
    assert "(3 of 6)" in right.get_title()
    mean_heights = np.array([p.get_height() for p in means.patches])  # α of 3 groups, then β
    np.testing.assert_allclose(mean_heights, [1e-6, 2e-4, 2e-4, 4e-4, 2e-4, 2e-4], rtol=1e-6)
    assert [t.get_text().split("\n")[1] for t in means.get_xticklabels()] == ["n=4", "n=6", "n=2"]


def test_png_size_and_both_bar_colours(run_dir):
    _, log = load_weight_log(run_dir)
    out = cls_weights_figure(log, run_dir / "figs" / "f4.png", count=4, epoch=5, dpi=80)
    width_in, height_in = draw_cls_weights(log, count=4).get_size_inches()
    with Image.open(out) as png:
        assert png.size == (round(width_in * 80), round(height_in * 80))
        rgb = np.asarray(png.convert("RGB")).astype(int)
    assert _has(rgb, ALPHA_COLOR)
    assert _has(rgb, BETA_COLOR)
    assert [p.name for p in out.parent.iterdir()] == ["f4.png"]
    with pytest.raises(UserError, match="overwrite"):
        cls_weights_figure(log, out)


def test_empty_group_is_named_in_its_title(tmp_path):
    labels = np.array([1, 2, 3, 4])
    _write_log(tmp_path, 1, labels, labels, labels, np.full(4, 0.25), None)  # all agree, l2rw (no β)
    _, log = load_weight_log(tmp_path, 1)
    figure = draw_cls_weights(log, epoch=1)
    left, right, _ = figure.axes
    assert left.get_title() == "pseudo = clean ≠ noisy: no samples in epoch 1"
    assert not left.patches
    assert len(right.patches) == 2 * 4
    assert "β not logged" in figure.get_suptitle()


def test_cli_writes_default_png_and_reports_missing_epoch(run_dir):
    result = runner.invoke(app, ["cls-weights", str(run_dir), "--count", "2"])
    assert result.exit_code == 0, result.output
    assert (run_dir / "figures" / "cls_weights_epoch_005.png").is_file()
    result = runner.invoke(app, ["cls-weights", str(run_dir), "--epoch", "3"])
    assert result.exit_code == 2
    assert "epoch_003.npz: not found; available epochs: 2, 5" in result.output
    result = runner.invoke(app, ["cls-weights", str(run_dir), "--count", "2"])
    assert result.exit_code == 2
    assert "--overwrite" in result.output


def test_missing_run_or_weights_folder(tmp_path):
    with pytest.raises(UserError, match=r"nope: no such run folder"):
        load_weight_log(tmp_path / "nope")
    with pytest.raises(UserError, match=r"weights: no epoch_XXX\.npz weight logs"):
        load_weight_log(tmp_path)
    result = runner.invoke(app, ["cls-weights", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "no such run folder" in result.output
