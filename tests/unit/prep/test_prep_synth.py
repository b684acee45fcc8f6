"""`mlbseg synth` phantoms: PROMISE12 layout and geometry, a real gland, deterministic bytes."""

import json

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


def _dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_zones_are_an_nnunet_dataset_of_the_same_phantoms_with_two_contrasts(tmp_path):
    small = {"in_plane": (128, 128), "slices": (6, 8), "seed": 4}
    write_phantoms(tmp_path / "pairs", cases=2, **small)
    ids = write_phantoms(tmp_path / "zones", cases=2, zones=True, rater=tmp_path / "rater", **small)
    assert ids == ["case_000", "case_001"]
    zones = tmp_path / "zones"
    spec = json.loads((zones / "dataset.json").read_text())
    assert spec["channel_names"] == {"0": "T2", "1": "ADC"}
    assert spec["labels"] == {"background": 0, "PZ": 1, "TZ": 2}
    assert (spec["numTraining"], spec["file_ending"]) == (2, ".nii.gz")
    assert sorted(p.name for p in (zones / "imagesTr").iterdir()) == [
        f"case_00{i}_000{c}.nii.gz" for i in range(2) for c in range(2)
    ]
    t2, geometry = read_volume(zones / "imagesTr" / "case_001_0000.nii.gz")
    adc, _ = read_volume(zones / "imagesTr" / "case_001_0001.nii.gz")
    labels, _ = read_volume(zones / "labelsTr" / "case_001.nii.gz")
    image, pairs_geometry = read_volume(tmp_path / "pairs" / "Case01.mhd")
    mask, _ = read_volume(tmp_path / "pairs" / "Case01_segmentation.mhd")
    np.testing.assert_array_equal(t2, image)  # the T2 channel is the default phantom, drawn the same way
    np.testing.assert_array_equal(labels > 0, mask.astype(bool))
    assert geometry["spacing"] == pytest.approx(pairs_geometry["spacing"])
    assert set(np.unique(labels)) == {0, 1, 2}
    assert t2[labels == 1].mean() > t2[labels == 2].mean()  # T2: PZ brighter than TZ
    assert adc[labels == 1].mean() > 1.3 * adc[labels == 2].mean()  # ADC: again, by more
    assert abs(np.corrcoef(t2.ravel(), adc.ravel())[0, 1]) < 0.9  # another contrast, not a scaled copy
    rater, rater_geometry = read_volume(tmp_path / "rater" / "case_001.nii.gz")
    assert rater.shape == labels.shape
    assert rater_geometry["origin"] == pytest.approx(geometry["origin"])
    assert set(np.unique(rater)) <= {0, 1, 2}
    for value in (1, 2):
        assert 0.5 < _dice(rater == value, labels == value) < 0.99


def test_rater_masks_are_named_like_the_references_and_seeded(tmp_path):
    small = {"in_plane": (64, 64), "slices": (8, 10), "seed": 1}
    write_phantoms(tmp_path / "raw", cases=3, rater=tmp_path / "rater", **small)
    write_phantoms(tmp_path / "again", cases=3, rater=tmp_path / "rater2", **small)
    names = sorted(p.name for p in (tmp_path / "rater").iterdir())
    assert names == [f"Case0{i}_segmentation.{e}" for i in range(3) for e in ("mhd", "raw")]
    dice = []
    for index in range(3):
        reference, geometry = read_volume(tmp_path / "raw" / f"Case0{index}_segmentation.mhd")
        rater, rater_geometry = read_volume(tmp_path / "rater" / f"Case0{index}_segmentation.mhd")
        assert rater_geometry == geometry
        assert set(np.unique(rater)) <= {0, 1}
        assert (tmp_path / "rater2" / f"Case0{index}_segmentation.raw").read_bytes() == (
            tmp_path / "rater" / f"Case0{index}_segmentation.raw"
        ).read_bytes()
        dice.append(_dice(rater.astype(bool), reference.astype(bool)))
    assert min(dice) > 0.6, dice
    assert max(dice) < 0.99, dice
    with pytest.raises(UserError, match="already exists; pass --overwrite"):
        write_phantoms(tmp_path / "new", cases=1, rater=tmp_path / "rater", **small)
    assert not (tmp_path / "new").exists()
