"""Every figure is written as PNG, PDF or SVG by its extension, byte-reproducibly, and opens as such."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from mlbseg.errors import UserError
from mlbseg.figures import FORMATS, new_figure, save_figure


def _figure():
    figure = new_figure(2.0, 1.5)
    ax = figure.subplots()
    ax.imshow(np.arange(12.0).reshape(3, 4))
    ax.plot([0, 3], [0, 2], label="line")
    return figure


def test_png_pdf_and_svg_open_as_what_their_extension_says(tmp_path):
    png = save_figure(_figure(), tmp_path / "f.png", dpi=100)
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (200, 150)
    pdf = save_figure(_figure(), tmp_path / "f.pdf")
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 1  # one page
    svg = save_figure(_figure(), tmp_path / "f.svg")
    root = ET.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.attrib["width"] == "144pt"  # 2 in × 72 pt/in
    assert sorted(path.name for path in tmp_path.iterdir()) == ["f.pdf", "f.png", "f.svg"]  # no temporaries


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_the_same_figure_gives_the_same_bytes(tmp_path, suffix):
    first = save_figure(_figure(), tmp_path / f"a{suffix}").read_bytes()
    second = save_figure(_figure(), tmp_path / f"b{suffix}").read_bytes()
    assert first == second


def test_other_extensions_and_existing_files_are_refused(tmp_path):
    with pytest.raises(UserError, match=r"f\.jpg: a figure is written as \.png, \.pdf, \.svg"):
        save_figure(_figure(), tmp_path / "f.jpg")
    save_figure(_figure(), tmp_path / "f.pdf")
    with pytest.raises(UserError, match="overwrite"):
        save_figure(_figure(), tmp_path / "f.pdf")
    assert not (tmp_path / "f.jpg").exists()
