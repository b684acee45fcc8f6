"""`mlbseg synth` phantoms: PROMISE12 layout and geometry, a real gland, deterministic bytes."""

import numpy as np
import pytest
from scipy import ndimage

from mlbseg.errors import UserError
from mlbseg.prep.discovery import discover_cases
from mlbseg.prep.phantom import PROMISE12_SIZES, make_phantom
from mlbseg.prep.synth import case_ids, write_phantoms
from mlbseg.prep.volumes import read_volume


def test_default_phantom_is_promise12_like():
    phantom = make_phantom(np.random.default_rng(3))
    num, rows, cols = phantom.image.shape
    assert rows == cols
    assert rows in PROMISE12_SIZES
    assert 15 <= num <= 54
    assert phantom.image.dtype == np.int16
    assert phantom.mask.dtype == np.uint8
    assert set(np.unique(phantom.mask)) == {0, 1}
    spacing = phantom.geometry["spacing"]
    assert 2.2 <= spacing[0] <= 4.0
    assert 0.25 <= spacing[1] == spacing[2] <= 0.8
    areas = phantom.mask.sum(axis=(1, 2))
    gland = np.nonzero(areas)[0]
    assert gland[0] > 0
    assert gland[-1] < num - 1
    peak = int(np.argmax(areas))
    assert areas[gland[0]] < areas[peak] > areas[gland[-1]]  # grows, then shrinks
    gland_voxels = phantom.mask.astype(bool)
    ring = ndimage.binary_dilation(gland_voxels, iterations=8) & ~gland_voxels
    inside, around = phantom.image[gland_voxels], phantom.image[ring]
    assert abs(np.median(inside) - np.median(around)) < 1.5 * np.std(around)  # modest local contrast


def test_case_ids_have_two_digits_or_more():
    assert case_ids(2) == ["Case00", "Case01"]
    assert case_ids(100)[-1] == "Case99"
    assert case_ids(101)[0] == "Case000"


def test_phantoms_are_deterministic_and_read_back(tmp_path):
    small = {"in_plane": (40, 56), "slices": (6, 9)}
    write_phantoms(tmp_path / "a", cases=3, seed=5, **small)
    write_phantoms(tmp_path / "b", cases=2, seed=5, **small)
    write_phantoms(tmp_path / "c", cases=2, seed=6, **small)
    for name in ("Case00.raw", "Case01_segmentation.raw", "Case01.mhd"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / "Case00.raw").read_bytes() != (tmp_path / "c" / "Case00.raw").read_bytes()
    cases, _ = discover_cases(tmp_path / "a")
    assert [case.case_id for case in cases] == ["Case00", "Case01", "Case02"]
    image, _geometry = read_volume(cases[0].image)
    mask, _ = read_volume(cases[0].mask)
    assert image.dtype == np.int16
    assert mask.dtype == np.uint8
    assert image.shape == mask.shape
    assert 40 <= image.shape[1] <= 56
    assert 6 <= image.shape[0] <= 9
    assert mask.any()
    origins = {tuple(read_volume(case.image)[1]["origin"]) for case in cases}
    assert len(origins) == 3


def test_synth_output_rules(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        write_phantoms(out, cases=1, in_plane=(32, 32), slices=(4, 4))
    assert (out / "keep.txt").read_text() == "mine"
    write_phantoms(out, cases=1, in_plane=(32, 32), slices=(4, 4), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == [
        "Case00.mhd",
        "Case00.raw",
        "Case00_segmentation.mhd",
        "Case00_segmentation.raw",
    ]
    with pytest.raises(UserError, match="--in-plane 64 32"):
        write_phantoms(tmp_path / "x", cases=1, in_plane=(64, 32))
    assert not (tmp_path / "x").exists()


def test_a_small_field_of_view_zooms_in_on_the_gland():
    def widest_gland_share(fov):
        phantom = make_phantom(np.random.default_rng(4), (128, 128), (20, 30), fov=fov)
        return phantom.mask.mean(axis=(1, 2)).max(), phantom.geometry["spacing"][1] * 128

    wide, wide_mm = widest_gland_share((130.0, 200.0))
    zoomed, zoomed_mm = widest_gland_share((90.0, 90.0))
    assert 130.0 <= wide_mm <= 200.0
    assert zoomed_mm == pytest.approx(90.0)
    assert zoomed > 2.0 * wide  # the same gland covers (wide_mm / 90)² times more of the slice


def test_a_field_of_view_below_80_mm_is_refused(tmp_path):
    with pytest.raises(UserError, match="--fov 60 90"):
        write_phantoms(tmp_path / "x", cases=1, in_plane=(32, 32), slices=(4, 4), fov=(60.0, 90.0))
    assert not (tmp_path / "x").exists()
