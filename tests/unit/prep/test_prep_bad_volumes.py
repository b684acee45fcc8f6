"""Hostile raw volumes: truncated or corrupt files, NaN/inf voxels, masks on another grid.

Every case is a one-line UserError naming the file, never zeros or a half-written output.
"""

import gzip

import nibabel as nib
import numpy as np
import pytest

from mlbseg.errors import UserError
from mlbseg.prep.discovery import CaseSource, check_pair
from mlbseg.prep.prepare import prepare_dataset
from mlbseg.prep.volumes import read_volume, write_volume

from ._helpers import GEOMETRY, write_pairs

SHAPE = (6, 24, 24)
VOLUME = np.random.default_rng(0).integers(1, 1000, SHAPE).astype(np.int16)  # no zero voxel


def _write(folder, suffix):
    """Write :data:`VOLUME` as ``v{suffix}``; return (volume path, file holding the voxels)."""
    path = folder / f"v{suffix}"
    write_volume(path, VOLUME, GEOMETRY)
    return path, path.with_suffix(".raw") if suffix == ".mhd" else path


def _one_line_error(path, match, capfd):
    """Reading ``path`` is a UserError naming it, matching ``match``, and nothing else reaches stderr."""
    with pytest.raises(UserError, match=match) as error:
        read_volume(path)
    message = str(error.value)
    assert message.startswith(str(path))
    assert "\n" not in message
    assert capfd.readouterr().err == ""  # no SimpleITK/MetaIO noise on stderr either
    return message


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mhd", ".mha"])
@pytest.mark.parametrize("keep", [0.5, -1], ids=["half", "all-but-one-byte"])
def test_truncated_volume_is_an_error_not_zeros(tmp_path, suffix, keep, capfd):
    path, data = _write(tmp_path, suffix)
    np.testing.assert_array_equal(read_volume(path)[0], VOLUME)  # the intact file reads back
    content = data.read_bytes()
    data.write_bytes(content[: int(len(content) * keep)] if keep > 0 else content[:keep])
    _one_line_error(path, "cannot read this volume's voxel data", capfd)


def test_nifti_gz_with_a_complete_stream_of_a_truncated_file(tmp_path, capfd):
    path, _ = _write(tmp_path, ".nii")
    packed = tmp_path / "p.nii.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()[:-10]))  # a valid gzip stream, 10 voxel bytes short
    message = _one_line_error(packed, r"truncated: p\.nii\.gz holds", capfd)
    assert f"of the {len(path.read_bytes())} bytes its header declares" in message


def test_nibabel_written_nifti_truncated(tmp_path, capfd):
    path = tmp_path / "nb.nii.gz"
    nib.save(nib.Nifti1Image(VOLUME.transpose(2, 1, 0), np.eye(4)), path)
    assert read_volume(path)[0].shape == SHAPE
    path.write_bytes(path.read_bytes()[:-200])
    _one_line_error(path, r"nb\.nii\.gz: cannot read this volume's voxel data \(damaged gzip", capfd)


@pytest.mark.parametrize("where", [0.5, -6], ids=["data", "crc"])
def test_corrupt_nifti_gz_is_an_error(tmp_path, where, capfd):
    path, _ = _write(tmp_path, ".nii.gz")
    content = bytearray(path.read_bytes())
    content[int(len(content) * where) if where > 0 else where] ^= 0x55
    path.write_bytes(bytes(content))
    _one_line_error(path, "cannot read this volume", capfd)


def test_metaimage_without_its_raw_file(tmp_path, capfd):
    path, data = _write(tmp_path, ".mhd")
    data.unlink()
    _one_line_error(path, r"v\.mhd: cannot read this volume's voxel data \(its data file .*v\.raw", capfd)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mhd", ".mha"])
def test_non_finite_voxels_are_refused(tmp_path, value, suffix, capfd):
    array = VOLUME.astype(np.float32)
    array[3, 4, 5] = value
    write_volume(tmp_path / f"f{suffix}", array, GEOMETRY)
    _one_line_error(tmp_path / f"f{suffix}", "the image contains NaN or inf values", capfd)


def test_non_finite_voxels_only_count_in_the_channel_read(tmp_path):
    xyzc = np.ones((4, 3, 2, 2), np.float32)
    xyzc[..., 1] = np.nan  # an ADC channel of NaN does not matter when T2 is read
    nib.save(nib.Nifti1Image(xyzc, np.eye(4)), tmp_path / "mr.nii.gz")
    assert np.isfinite(read_volume(tmp_path / "mr.nii.gz", channel=0)[0]).all()
    with pytest.raises(UserError, match="NaN or inf"):
        read_volume(tmp_path / "mr.nii.gz", channel=1)


def _pair(tmp_path, **mask_geometry):
    write_volume(tmp_path / "Case00.mhd", VOLUME, GEOMETRY)
    write_volume(
        tmp_path / "Case00_segmentation.mhd", np.zeros(SHAPE, np.uint8), {**GEOMETRY, **mask_geometry}
    )
    return CaseSource(
        "Case00", (tmp_path / "Case00.mhd",), tmp_path / "Case00_segmentation.mhd", "Case00_segmentation.mhd"
    )


ROTATED = [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
TILTED = [1.0, 0.0, 0.0, 0.0, 0.9999995, -0.001, 0.0, 0.001, 0.9999995]  # 1 mrad about x


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            {"origin": [-10.0, -20.0, 5.006]},
            r"mask origin \(x, y, z\) \[-10, -20, 5.006\] differs .* \[-10, -20, 5\]",
        ),
        ({"origin": [0.0, 0.0, 0.0]}, r"mask origin \(x, y, z\)"),
        ({"direction": ROTATED}, "mask direction"),
        ({"direction": TILTED}, "mask direction"),
        ({"spacing": [3.0, 0.5, 0.51]}, r"mask spacing \(z, y, x\)"),
    ],
    ids=["origin-by-1.2%-of-a-voxel", "origin", "rotated", "tilted-1-mrad", "spacing"],
)
def test_mask_on_another_grid_names_both_files(tmp_path, change, match):
    source = _pair(tmp_path, **change)
    with pytest.raises(UserError, match=match) as error:
        check_pair(source)
    message = str(error.value)
    assert message.startswith(f"{source.mask}: ")
    assert f"({source.image})" in message
    assert "\n" not in message


def test_mask_grid_within_tolerance_is_accepted(tmp_path):
    nearly = [1.0, 0.0, 0.0, 0.0, 1.0, 5e-5, 0.0, -5e-5, 1.0]
    check_pair(_pair(tmp_path, origin=[-10.004, -19.996, 5.004], direction=nearly))  # 0.8% of a voxel


def test_mask_shape_mismatch_from_the_headers(tmp_path):
    write_volume(tmp_path / "a.nii.gz", VOLUME, GEOMETRY)
    write_volume(tmp_path / "a_segmentation.nii.gz", np.zeros((6, 24, 20), np.uint8), GEOMETRY)
    source = CaseSource(
        "a", (tmp_path / "a.nii.gz",), tmp_path / "a_segmentation.nii.gz", "a_segmentation.nii.gz"
    )
    with pytest.raises(
        UserError, match=r"mask shape \(z, y, x\) \(6, 24, 20\) differs from its image's \(6, 24, 24\)"
    ):
        check_pair(source)


def test_prepare_refuses_a_shifted_mask_before_writing_anything(tmp_path):
    raw = write_pairs(tmp_path / "raw", count=3)
    mask = np.asarray(read_volume(raw / "Case01_segmentation.mhd")[0])
    write_volume(raw / "Case01_segmentation.mhd", mask, {**GEOMETRY, "origin": [-10.0, -19.0, 5.0]})
    with pytest.raises(UserError, match=r"Case01_segmentation\.mhd: mask origin .*Case01\.mhd\)"):
        prepare_dataset(raw, tmp_path / "prepared", size=16)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["raw"]


def test_prepare_refuses_a_truncated_nifti_and_leaves_nothing(tmp_path):
    raw = write_pairs(tmp_path / "raw", count=3, suffix=".nii.gz")
    image = raw / "Case02.nii.gz"
    image.write_bytes(image.read_bytes()[:-40])
    with pytest.raises(UserError, match=r"Case02\.nii\.gz: cannot read this volume's voxel data"):
        prepare_dataset(raw, tmp_path / "prepared", size=16)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["raw"]
