import numpy as np
import pytest
from PIL import Image

from mlbseg.errors import UserError
from mlbseg.figures import save_figure
from mlbseg.figures.overlay import LEGEND_INCHES, default_slices, draw_overlay, overlay_figure

RED, YELLOW, CYAN = (255, 0, 0), (255, 255, 0), (0, 255, 255)
H, W = 48, 64


def _count(png, color, tolerance=8):
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(pixels - np.array(color)).max(axis=-1) <= tolerance).sum())


@pytest.fixture
def case():
    rng = np.random.default_rng(0)
    image = rng.normal(100.0, 20.0, (5, H, W))
    reference = np.zeros((5, H, W), np.uint8)
    reference[1:4, 12:36, 16:48] = 1
    noisy = np.zeros_like(reference)
    noisy[1:4, 6:30, 24:60] = 1
    prediction = np.zeros_like(reference)
    prediction[1:4, 16:40, 12:40] = 1
    return image, reference, noisy, prediction


def test_png_has_the_figure_size_at_the_requested_dpi_and_all_three_contours(tmp_path, case):
    out = overlay_figure(*case, out_path=tmp_path / "overlay.png")
    figure = draw_overlay(*case)
    assert tuple(figure.get_size_inches()) == pytest.approx((3.0 * 3, 3.0 * H / W + LEGEND_INCHES))
    with Image.open(out) as png:
        assert png.size == tuple(round(v * 300) for v in figure.get_size_inches())
    for color in (RED, YELLOW, CYAN):
        assert _count(out, color) > 500, color


@pytest.mark.parametrize(
    ("missing", "absent_color", "present"), [("noisy", YELLOW, CYAN), ("prediction", CYAN, YELLOW)]
)
def test_missing_layers_are_left_out_of_panels_and_legend(tmp_path, case, missing, absent_color, present):
    image, reference, noisy, prediction = case
    layers = {"noisy": noisy, "prediction": prediction, missing: None}
    out = overlay_figure(
        image, reference, layers["noisy"], layers["prediction"], out_path=tmp_path / "o.png", dpi=100
    )
    assert _count(out, absent_color) == 0
    assert _count(out, present) > 0
    assert _count(out, RED) > 0
    figure = draw_overlay(image, reference, layers["noisy"], layers["prediction"])
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert len(labels) == 2
    assert "Reference" in labels


def test_rows_are_drawn_top_down_and_columns_left_right(tmp_path):
    # A wide, short box in the top-right corner: red must appear there in the panel, wider than tall.
    image = np.zeros((H, W))
    reference = np.zeros((H, W), np.uint8)
    reference[2:10, 34:62] = 1
    figure = draw_overlay(image, reference)
    out = save_figure(figure, tmp_path / "o.png", dpi=figure.dpi)
    pixels = np.asarray(Image.open(out).convert("RGB")).astype(int)
    box = figure.axes[0].get_window_extent()  # display pixels, origin at the bottom left
    top, left = pixels.shape[0] - box.y1, box.x0
    rows, cols = np.nonzero(np.abs(pixels - np.array(RED)).max(axis=-1) <= 8)
    inside = (rows >= top) & (rows <= top + box.height) & (cols >= left) & (cols <= box.x1)
    row_frac, col_frac = (rows[inside] - top) / box.height, (cols[inside] - left) / box.width
    assert inside.sum() > 100
    assert row_frac.min() > 1 / H
    assert row_frac.max() < 11 / H
    assert col_frac.min() > 33 / W
    assert col_frac.max() < 63 / W
    assert np.ptp(cols[inside]) > 2 * np.ptp(rows[inside])


def test_titles_carry_the_slice_dice_of_the_prediction(case):
    image, reference, noisy, _ = case
    prediction = reference.copy()
    prediction[3] = 0
    figure = draw_overlay(image, reference, noisy, prediction, slices=[2, 3], titles=["mid", "base"])
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["mid\nDice 1.000", "base\nDice 0.000"]


def test_default_slices_spread_over_the_reference_extent():
    mask = np.zeros((30, 4, 4), np.uint8)
    assert default_slices(mask) == [15]
    mask[7] = 1
    assert default_slices(mask) == [7]
    mask[7:23] = 1
    assert default_slices(mask) == [10, 15, 20]


def test_single_slice_input_and_bad_shapes(case):
    image, reference, noisy, prediction = case
    figure = draw_overlay(image[2], reference[2], noisy[2], prediction[2])
    assert len(figure.axes) == 1
    with pytest.raises(ValueError, match="noisy"):
        draw_overlay(image, reference, noisy[:, :-1], prediction)
    with pytest.raises(ValueError, match="slices"):
        draw_overlay(image, reference, slices=[5])
    with pytest.raises(ValueError, match="titles"):
        draw_overlay(image, reference, slices=[1, 2], titles=["one"])


def test_existing_png_needs_overwrite(tmp_path, case):
    out = overlay_figure(*case, out_path=tmp_path / "o.png", dpi=50)
    with pytest.raises(UserError, match="overwrite"):
        overlay_figure(*case, out_path=out, dpi=50)
    overlay_figure(*case, out_path=out, dpi=50, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]
