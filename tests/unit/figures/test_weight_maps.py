import numpy as np
import pytest
import torch
from PIL import Image

from mlbseg.figures.weights import PANELS, draw_weight_maps, weight_map_figure

H, W = 24, 32


def _row(seed, scale):
    rng = np.random.default_rng(seed)
    mask = np.zeros((H, W), np.uint8)
    mask[6:18, 8:24] = 1
    return {
        "image": rng.normal(size=(H, W)),
        "noisy": np.roll(mask, 3, axis=1),
        "pseudo": mask,
        "reference": mask,
        "alpha": rng.random((H, W)) * scale,
        "beta": torch.rand(H, W, dtype=torch.float64) * 2 * scale,
        "title": f"slice {seed}",
    }


def test_alpha_and_beta_share_one_colour_scale_per_row_with_a_colour_bar():
    rows = [_row(0, 1e-6), _row(1, 1e-3)]
    figure = draw_weight_maps(rows)
    assert len(figure.axes) == len(rows) * len(PANELS) + len(rows)  # + one colour bar per row
    for r, row in enumerate(rows):
        axes = figure.axes[r * len(PANELS) : (r + 1) * len(PANELS)]
        alpha_clim, beta_clim = axes[4].images[0].get_clim(), axes[5].images[0].get_clim()
        top = max(row["alpha"].max(), float(row["beta"].max()))
        assert alpha_clim == beta_clim == pytest.approx((0.0, top))
        assert axes[0].get_ylabel() == row["title"]
        assert all(not ax.get_xticks().size and not ax.get_yticks().size for ax in axes)
    assert [ax.get_title() for ax in figure.axes[: len(PANELS)]] == [title for _, title in PANELS]


def test_all_zero_weights_still_get_a_valid_scale():
    row = _row(0, 0.0)
    figure = draw_weight_maps([row])
    assert figure.axes[4].images[0].get_clim() == (0.0, 1.0)


def test_png_matches_figure_size_and_dpi(tmp_path):
    out = weight_map_figure([_row(0, 1e-4), _row(1, 1e-4), _row(2, 1e-4)], tmp_path / "w.png", dpi=80)
    width_in, height_in = draw_weight_maps([_row(0, 1e-4)] * 3).get_size_inches()
    assert (width_in, height_in) == pytest.approx((6 * 1.6 + 0.6, 3 * 1.6 * H / W + 0.3))
    with Image.open(out) as png:
        assert png.size == (round(width_in * 80), round(height_in * 80))
        assert png.info["dpi"] == pytest.approx((80, 80), abs=0.01)


def test_rows_are_validated():
    row = _row(0, 1.0)
    with pytest.raises(ValueError, match="at least one row"):
        draw_weight_maps([])
    with pytest.raises(ValueError, match=r"lacks \['beta'\]"):
        draw_weight_maps([{key: value for key, value in row.items() if key != "beta"}])
    with pytest.raises(ValueError, match="one shape"):
        draw_weight_maps([{**row, "alpha": np.zeros((H, W + 1))}])
    with pytest.raises(ValueError, match="row 1"):
        draw_weight_maps([row, {**row, **{key: np.zeros((H + 2, W)) for key, _ in PANELS}}])
