"""Overlays of K > 2 labels: one contour colour per foreground class, a legend of label names."""

import numpy as np
from PIL import Image

from mlbseg.figures.overlay import CLASS_COLORS, draw_overlay, overlay_figure

H, W = 48, 64


def _rgb(hex_color):
    return np.array([int(hex_color[i : i + 2], 16) for i in (1, 3, 5)])


def _count(png, color, tolerance=8):
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    return int((np.abs(pixels - color).max(axis=-1) <= tolerance).sum())


def _zones():
    """Reference: PZ (1) square with a TZ (2) square inside; prediction: PZ only (no TZ)."""
    image = np.random.default_rng(0).normal(100.0, 20.0, (3, H, W))
    reference = np.zeros((3, H, W), np.uint8)
    reference[:, 8:40, 12:52] = 1
    reference[:, 16:32, 24:40] = 2
    prediction = np.where(reference == 2, 1, reference).astype(np.uint8)
    return image, reference, prediction


def test_each_class_has_its_colour_and_the_legend_names_the_labels(tmp_path):
    image, reference, prediction = _zones()
    out = overlay_figure(
        image, reference, None, prediction, out_path=tmp_path / "o.png", dpi=100, class_names=["PZ", "TZ"]
    )
    pz, tz, third = (_rgb(color) for color in CLASS_COLORS[:3])
    assert _count(out, pz) > 200
    assert _count(out, tz) > 50
    assert _count(out, third) == 0  # no third class, and no binary layer colour (yellow) either
    figure = draw_overlay(image, reference, None, prediction, class_names=["PZ", "TZ"], slices=[1])
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == ["PZ", "TZ", "Reference", "Prediction"]
    # slice Dice: mean of PZ (its predicted area holds TZ too) and TZ (not predicted: 0)
    pz_dice = 2 * (32 * 40 - 16 * 16) / (32 * 40 + 32 * 40 - 16 * 16)
    assert figure.axes[0].get_title() == f"slice 1\nDice {(pz_dice + 0.0) / 2:.3f}"


def _segments_by_colour(figure):
    """{(label, colour hex): number of contour polylines} of the first panel."""
    counts = {}
    for collection in figure.axes[0].collections:
        colour = "#" + "".join(f"{round(255 * c):02x}" for c in collection.get_colors()[0][:3])
        counts[(collection.get_label(), colour)] = len(collection.get_segments())
    return counts


def test_a_contour_per_class_and_layer_and_none_for_an_absent_class():
    image, reference, prediction = _zones()
    only_tz = np.where(reference == 2, 2, 0).astype(np.uint8)
    figure = draw_overlay(image, only_tz, None, prediction, class_names=["PZ", "TZ"], slices=[1])
    pz, tz = CLASS_COLORS[:2]
    assert _segments_by_colour(figure) == {
        ("Reference", pz): 0,  # no PZ in this reference
        ("Reference", tz): 1,
        ("Prediction", pz): 1,  # the prediction's PZ square (TZ merged into it)
        ("Prediction", tz): 0,
    }
    styles = {c.get_label(): c.get_linestyle()[0] for c in figure.axes[0].collections}
    assert styles["Reference"] != styles["Prediction"]  # layers differ by line style


def test_one_class_name_keeps_the_binary_drawing(tmp_path):
    image, reference, _ = _zones()
    binary = (reference > 0).astype(np.uint8)
    figure = draw_overlay(image, binary, None, binary, class_names=["prostate"], slices=[0])
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["Reference", "Prediction"]
    assert figure.axes[0].get_title() == "slice 0\nDice 1.000"
