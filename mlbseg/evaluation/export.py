"""Read a volume for prediction and write a mask in a reference volume's own geometry.

Arrays are (z, y, x) inside mlbseg (SimpleITK's ``GetArrayFromImage`` order). Geometry uses the convention
of :mod:`mlbseg.prep.volumes` and the manifest: ``spacing`` in array order (z, y, x) mm, ``origin`` (x, y, z)
and ``direction`` (3×3 row-major) as in the ITK/LPS file header. Supported files: MetaImage ``.mhd`` (+
``.raw``) and ``.mha``, NIfTI ``.nii`` and ``.nii.gz``.
A NIfTI mask written next to a NIfTI reference copies the reference's header with nibabel (affine, qform
and sform with their codes, units), so no geometry is lost in a SimpleITK round trip; every other pairing
goes through SimpleITK with the reference's size, spacing, origin and direction. Outputs are written into a
temporary folder beside the target and renamed into place (for ``.mhd``: the ``.raw`` first, then the
header), so an interrupted write never leaves a half-written mask under the final name.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from mlbseg.errors import UserError
from mlbseg.prep.volumes import Geometry, read_header

FORMATS = (".mhd", ".mha", ".nii", ".nii.gz")
NIFTI = (".nii", ".nii.gz")


def volume_format(path: Path) -> str:
    """The extension of ``path`` among :data:`FORMATS`; anything else is a UserError."""
    name = path.name.lower()
    for ext in sorted(FORMATS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    raise UserError(f"{path}: unsupported volume format; use one of {', '.join(FORMATS)}")


def _write_with_sitk(mask: np.ndarray, geometry: Geometry, target: Path) -> None:
    image = sitk.GetImageFromArray(mask)  # array (z, y, x) -> image size (x, y, z)
    image.SetSpacing(geometry["spacing"][::-1])
    image.SetOrigin(geometry["origin"])
    image.SetDirection(geometry["direction"])
    sitk.WriteImage(image, str(target), useCompression=False)  # .nii.gz is compressed by its extension


def _write_nifti_like(mask: np.ndarray, reference: Path, target: Path) -> None:
    try:
        ref = nib.load(str(reference))
    except Exception as err:  # nibabel raises several unrelated types for a bad file
        raise UserError(f"{reference}: cannot read the reference NIfTI header ({err})") from None
    header = ref.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)  # the reference's intensity scaling does not apply to a label map
    header["cal_min"], header["cal_max"] = 0.0, 0.0  # nor does its display window
    data = np.ascontiguousarray(mask.transpose(2, 1, 0))  # file voxel order (i, j, k) = (x, y, z)
    nib.save(type(ref)(data, ref.affine, header), str(target))


def write_mask_like(
    mask_zyx: np.ndarray, reference_path: str | Path, out_path: str | Path, *, overwrite: bool = False
) -> Path:
    """Write a label mask with exactly the reference volume's size, spacing, origin and direction.

    Args:
        mask_zyx: Labels [Z, Y, X] (bool or integers in 0..255, stored as uint8), indexed like the
            reference's SimpleITK array (as :func:`mlbseg.prep.volumes.read_volume` returns it).
        reference_path: The volume whose geometry the mask takes (any of :data:`FORMATS`; for a 4-D
            reference its first three axes).
        out_path: Target file; its extension (one of :data:`FORMATS`) picks the format. A ``.mhd`` gets its
            uncompressed ``.raw`` alongside; ``.mha`` is written uncompressed too.
        overwrite: Replace an existing output instead of refusing.

    Returns:
        ``out_path`` as a Path.

    Raises:
        UserError: Unsupported extension, unreadable reference, mask shape different from the reference's
            (z, y, x) size, or an existing output without ``overwrite``.
    """
    reference_path, out_path = Path(reference_path), Path(out_path)
    out_format = volume_format(out_path)
    size_xyz, geometry = read_header(reference_path)
    mask = np.asarray(mask_zyx)
    if mask.shape != size_xyz[::-1]:
        raise UserError(
            f"{reference_path}: mask shape (z, y, x) {mask.shape} differs from the volume's {size_xyz[::-1]}"
        )
    if mask.dtype.kind not in "bui":
        raise ValueError(f"mask_zyx must hold bool or integer labels, got dtype {mask.dtype}")
    mask = mask.astype(np.uint8)
    targets = [out_path]
    if out_format == ".mhd":
        targets.insert(0, out_path.with_suffix(".raw"))  # data before header
    if not overwrite and any(target.exists() for target in targets):
        raise UserError(f"{out_path}: already exists; pass --overwrite to replace it")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=f".{out_path.name}.") as staging:
        staged = Path(staging) / out_path.name
        if out_format in NIFTI and reference_path.name.lower().endswith(NIFTI):
            _write_nifti_like(mask, reference_path, staged)
        else:
            _write_with_sitk(mask, geometry, staged)
        for target in targets:
            os.replace(Path(staging) / target.name, target)
    return out_path
