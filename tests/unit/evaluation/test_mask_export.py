import os

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mlbseg.errors import UserError
from mlbseg.evaluation.export import write_mask_like
from mlbseg.prep.volumes import read_volume

SHAPE_ZYX = (5, 9, 12)
SPACING_XYZ = (0.6125, 0.65, 3.6)
ORIGIN_XYZ = (-100.123456789, -52.5, 20.000001)
ANGLE = np.deg2rad(7.0)  # an oblique acquisition: rotation about y
DIRECTION = (np.cos(ANGLE), 0.0, np.sin(ANGLE), 0.0, 1.0, 0.0, -np.sin(ANGLE), 0.0, np.cos(ANGLE))
FORMATS = (".mhd", ".mha", ".nii", ".nii.gz")
METAIMAGE = (".mhd", ".mha")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _write_reference(folder, ext):
    voxels = np.random.default_rng(0).integers(0, 1000, SHAPE_ZYX).astype(np.int16)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin(ORIGIN_XYZ)
    image.SetDirection(DIRECTION)
    path = folder / f"Case00{ext}"
    sitk.WriteImage(image, str(path))
    return path, voxels


def _sitk_geometry(image):
    return image.GetSize(), image.GetSpacing(), image.GetOrigin(), image.GetDirection()


def _affine_from_sitk(image):
    """The NIfTI (RAS) affine implied by a SimpleITK (LPS) geometry."""
    linear = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = linear, image.GetOrigin()
    return LPS_TO_RAS @ affine


@pytest.fixture
def mask():
    mask = np.zeros(SHAPE_ZYX, np.uint8)
    mask[1:4, 2:7, 3:10] = 1
    mask[2, 4, 4] = 0
    return mask


@pytest.mark.parametrize("out_ext", FORMATS)
@pytest.mark.parametrize("ref_ext", FORMATS)
def test_round_trip_keeps_the_reference_geometry(tmp_path, mask, ref_ext, out_ext):
    reference, _ = _write_reference(tmp_path, ref_ext)
    out = write_mask_like(mask, reference, tmp_path / "out" / f"pred{out_ext}")
    ref_image, out_image = sitk.ReadImage(str(reference)), sitk.ReadImage(str(out))
    size, spacing, origin, direction = _sitk_geometry(out_image)
    assert size == ref_image.GetSize()
    exact = (ref_ext in METAIMAGE) == (out_ext in METAIMAGE)  # float32 NIfTI headers round off the rest
    tolerance = {"rtol": 0, "atol": 0} if exact else {"rtol": 1e-6, "atol": 1e-5}  # NIfTI stores float32
    np.testing.assert_allclose(spacing, ref_image.GetSpacing(), **tolerance)
    np.testing.assert_allclose(origin, ref_image.GetOrigin(), **tolerance)
    np.testing.assert_allclose(direction, ref_image.GetDirection(), **tolerance)
    np.testing.assert_allclose(spacing, SPACING_XYZ, rtol=1e-6)
    np.testing.assert_allclose(origin, ORIGIN_XYZ, atol=1e-5)
    assert out_image.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out_image), mask)
    if out_ext not in METAIMAGE:
        out_nifti = nib.load(str(out))
        np.testing.assert_allclose(out_nifti.affine, _affine_from_sitk(ref_image), atol=1e-5)
        np.testing.assert_array_equal(np.asarray(out_nifti.dataobj), mask.transpose(2, 1, 0))
    if ref_ext not in METAIMAGE and out_ext not in METAIMAGE:
        ref_nifti = nib.load(str(reference))
        np.testing.assert_array_equal(out_nifti.affine, ref_nifti.affine)


def test_nifti_reference_header_is_copied_exactly(tmp_path, mask):
    # A scanner-style header: sform (code 2, aligned) and qform (code 1, scanner) that differ slightly.
    affine = np.array([[-0.6, 0.01, 0, 90.0], [0, -0.65, 0.05, 80.0], [0, 0, 3.6, -30.0], [0, 0, 0, 1]])
    image = nib.Nifti1Image(np.zeros(SHAPE_ZYX[::-1], np.int16), None)
    image.header.set_qform(affine @ np.diag([1, 1, 1.0001, 1]), code=1)
    image.header.set_sform(affine, code=2)
    image.header.set_xyzt_units("mm", "sec")
    reference = tmp_path / "ref.nii.gz"
    nib.save(image, str(reference))
    out = nib.load(str(write_mask_like(mask, reference, tmp_path / "pred.nii.gz")))
    ref = nib.load(str(reference))
    for key in (
        "qform_code",
        "sform_code",
        "quatern_b",
        "quatern_c",
        "quatern_d",
        "qoffset_x",
        "pixdim",
        "xyzt_units",
    ):
        np.testing.assert_array_equal(out.header[key], ref.header[key], err_msg=key)
    np.testing.assert_array_equal(out.header.get_sform(), ref.header.get_sform())
    np.testing.assert_array_equal(out.header.get_qform(), ref.header.get_qform())
    assert _sitk_geometry(sitk.ReadImage(str(tmp_path / "pred.nii.gz"))) == _sitk_geometry(
        sitk.ReadImage(str(reference))
    )


def test_mhd_output_is_uncompressed_and_leaves_no_temporary_files(tmp_path, mask):
    reference, _ = _write_reference(tmp_path, ".mhd")
    out_dir = tmp_path / "out"
    write_mask_like(mask, reference, out_dir / "pred.mhd")
    assert sorted(os.listdir(out_dir)) == ["pred.mhd", "pred.raw"]
    header = (out_dir / "pred.mhd").read_text()
    assert "CompressedData = False" in header
    assert "ElementDataFile = pred.raw" in header
    assert (out_dir / "pred.raw").stat().st_size == mask.size


def test_existing_output_needs_overwrite(tmp_path, mask):
    reference, _ = _write_reference(tmp_path, ".nii.gz")
    out = write_mask_like(mask, reference, tmp_path / "pred.nii.gz")
    with pytest.raises(UserError, match=r"pred\.nii\.gz.*overwrite"):
        write_mask_like(1 - mask, reference, out)
    write_mask_like(1 - mask, reference, out, overwrite=True)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))), 1 - mask)
    assert sorted(os.listdir(tmp_path)) == ["Case00.nii.gz", "pred.nii.gz"]


def test_user_mistakes_name_the_file(tmp_path, mask):
    reference, _ = _write_reference(tmp_path, ".mhd")
    with pytest.raises(UserError, match=r"Case00\.mhd.*\(5, 9, 11\)"):
        write_mask_like(mask[..., :11], reference, tmp_path / "pred.nii.gz")
    with pytest.raises(UserError, match=r"pred\.png: unsupported"):
        write_mask_like(mask, reference, tmp_path / "pred.png")
    with pytest.raises(UserError, match=r"missing\.nii: no such file"):
        write_mask_like(mask, tmp_path / "missing.nii", tmp_path / "pred.nii")
    assert sorted(os.listdir(tmp_path)) == ["Case00.mhd", "Case00.raw"]


def test_masks_of_one_channel_of_a_4d_file_follow_its_geometry(tmp_path):
    xyzc = np.random.default_rng(1).random((12, 9, 5, 2)).astype(np.float32)  # nibabel order (x, y, z, c)
    affine = np.diag([0.6, 0.7, 3.0, 1.0])
    path = tmp_path / "prostate_00.nii.gz"
    nib.save(nib.Nifti1Image(xyzc, affine), str(path))
    array, geometry = read_volume(path, channel=1)  # the reader predict uses
    np.testing.assert_array_equal(array, xyzc[..., 1].transpose(2, 1, 0))
    np.testing.assert_allclose(geometry["spacing"], (3.0, 0.7, 0.6), rtol=1e-6)
    mask = (array > 0.5).astype(np.uint8)
    out = nib.load(str(write_mask_like(mask, path, tmp_path / "pred.nii.gz")))
    assert out.shape == (12, 9, 5)
    np.testing.assert_array_equal(out.affine, nib.load(str(path)).affine)
    np.testing.assert_array_equal(np.asarray(out.dataobj), mask.transpose(2, 1, 0))
