"""Reading MetaImage / NIfTI into (z, y, x) arrays with geometry, and finding cases in raw folders."""

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mlbseg.errors import UserError
from mlbseg.prep.discovery import MSD, PAIRS, discover_cases
from mlbseg.prep.volumes import read_volume, write_volume

from ._helpers import GEOMETRY, write_pairs


def test_metaimage_round_trip_keeps_array_dtype_and_geometry(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (z, y, x)
    geometry = {
        "spacing": [3.0, 0.6, 0.4],
        "origin": [1.5, -2.0, 30.0],
        "direction": [0, 1.0, 0, -1.0, 0, 0, 0, 0, 1.0],
    }
    write_volume(tmp_path / "v.mhd", array, geometry)
    assert (tmp_path / "v.raw").is_file()
    image = sitk.ReadImage(str(tmp_path / "v.mhd"))
    assert image.GetSize() == (6, 5, 4)  # SimpleITK size is (x, y, z)
    assert image.GetSpacing() == pytest.approx((0.4, 0.6, 3.0))
    back, back_geometry = read_volume(tmp_path / "v.mhd")
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, array)
    for key in geometry:
        assert back_geometry[key] == pytest.approx(geometry[key])


def test_nifti_from_nibabel_is_transposed_to_zyx_with_lps_geometry(tmp_path):
    xyz = np.random.default_rng(0).integers(0, 100, (7, 5, 3)).astype(np.int16)  # nibabel order (x, y, z)
    affine = np.diag([0.5, 0.8, 2.5, 1.0])
    affine[:3, 3] = [10.0, 20.0, -30.0]  # RAS
    nib.save(nib.Nifti1Image(xyz, affine), tmp_path / "v.nii.gz")
    array, geometry = read_volume(tmp_path / "v.nii.gz")
    assert array.shape == (3, 5, 7)
    np.testing.assert_array_equal(array, xyz.transpose(2, 1, 0))
    assert array[2, 4, 6] == xyz[6, 4, 2]
    assert geometry["spacing"] == pytest.approx([2.5, 0.8, 0.5])  # (z, y, x)
    assert geometry["origin"] == pytest.approx([-10.0, -20.0, -30.0])  # LPS
    assert geometry["direction"] == pytest.approx([-1, 0, 0, 0, -1, 0, 0, 0, 1])


def test_four_d_nifti_channel_selection_and_errors(tmp_path):
    xyzc = np.stack([np.full((4, 3, 2), 11, np.int16), np.full((4, 3, 2), 22, np.int16)], axis=-1)
    nib.save(nib.Nifti1Image(xyzc, np.eye(4)), tmp_path / "mr.nii.gz")
    t2, geometry = read_volume(tmp_path / "mr.nii.gz", channel=0)
    adc, _ = read_volume(tmp_path / "mr.nii.gz", channel=1)
    assert t2.shape == (2, 3, 4)
    assert (t2 == 11).all()
    assert (adc == 22).all()
    assert len(geometry["direction"]) == 9
    with pytest.raises(UserError, match=r"mr\.nii\.gz: has 2 channels"):
        read_volume(tmp_path / "mr.nii.gz", channel=2)
    with pytest.raises(UserError, match="expected a 3-D scalar volume"):
        read_volume(tmp_path / "mr.nii.gz")  # masks must be 3-D
    write_volume(tmp_path / "v.mhd", t2, GEOMETRY)
    with pytest.raises(UserError, match="--channel 1 does not exist"):
        read_volume(tmp_path / "v.mhd", channel=1)


def test_truncated_raw_and_bad_header_are_user_errors_naming_the_file(tmp_path):
    write_volume(tmp_path / "v.mhd", np.ones((4, 8, 8), np.int16), GEOMETRY)
    raw = tmp_path / "v.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(
        UserError,
        match=r"v\.mhd: cannot read this volume.s voxel data \(truncated: v\.raw holds 100 of the 512 bytes",
    ):
        read_volume(tmp_path / "v.mhd")
    (tmp_path / "w.mhd").write_text("this is not a MetaImage header\n")
    with pytest.raises(UserError, match=r"w\.mhd: cannot read this volume.s header"):
        read_volume(tmp_path / "w.mhd")
    with pytest.raises(UserError, match=r"missing\.mhd: no such file"):
        read_volume(tmp_path / "missing.mhd")


def test_pairs_discovery_ignores_stray_files_and_sorts(tmp_path):
    raw = write_pairs(tmp_path / "raw", count=3)
    for stray in ("._Case00.mhd", ".DS_Store", "_notes.mhd", "README.txt", "dataset.json"):
        (raw / stray).write_text("junk")
    (raw / "subfolder").mkdir()
    cases, layout = discover_cases(raw)
    assert layout == PAIRS
    assert [case.case_id for case in cases] == ["Case00", "Case01", "Case02"]
    assert cases[1].image.name == "Case01.mhd"
    assert cases[1].mask.name == "Case01_segmentation.mhd"


def test_nifti_pairs_and_msd_layout(tmp_path):
    nifti = write_pairs(tmp_path / "nifti", count=2, suffix=".nii.gz")
    assert [case.mask.name for case in discover_cases(nifti)[0]] == [
        "Case00_segmentation.nii.gz",
        "Case01_segmentation.nii.gz",
    ]
    msd = tmp_path / "Task05_Prostate"
    for sub in ("imagesTr", "labelsTr"):
        (msd / sub).mkdir(parents=True)
        for name in ("prostate_02.nii.gz", "prostate_00.nii.gz", "._prostate_00.nii.gz"):
            (msd / sub / name).write_bytes(b"")
    (msd / "dataset.json").write_text("{}")
    cases, layout = discover_cases(msd)
    assert layout == MSD
    assert [(c.case_id, c.image.parent.name, c.mask.parent.name) for c in cases] == [
        ("prostate_00", "imagesTr", "labelsTr"),
        ("prostate_02", "imagesTr", "labelsTr"),
    ]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda raw: (raw / "Case01_segmentation.mhd").unlink(), r"Case01\.mhd: no mask for this image"),
        (lambda raw: (raw / "Case01.mhd").unlink(), r"Case01_segmentation\.mhd: mask without an image"),
        (lambda raw: (raw / "Case01.nii").write_bytes(b""), r"a second image for case 'Case01'"),
        (lambda raw: (raw / "imagesTr").mkdir(), "both imagesTr/ .* and top-level volumes"),
    ],
)
def test_pairs_discovery_errors(tmp_path, change, match):
    raw = write_pairs(tmp_path / "raw", count=2)
    change(raw)
    with pytest.raises(UserError, match=match):
        discover_cases(raw)


def test_empty_wrong_and_nested_folders(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        discover_cases(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no cases found"):
        discover_cases(tmp_path / "empty")
    write_pairs(tmp_path / "outer" / "TrainingData_Part1", count=1)
    with pytest.raises(UserError, match="volumes found in TrainingData_Part1/"):
        discover_cases(tmp_path / "outer")
    (tmp_path / "msd" / "imagesTr").mkdir(parents=True)
    with pytest.raises(UserError, match="no labelsTr/"):
        discover_cases(tmp_path / "msd")
