"""Read and write 3-D volumes as (z, y, x) numpy arrays plus their geometry (DESIGN.md §2).

Every volume enters mlbseg through :func:`read_volume` and leaves through :func:`write_volume`, both with
SimpleITK, for MetaImage (``.mhd``/``.mha``) and NIfTI (``.nii``/``.nii.gz``) alike. SimpleITK returns
arrays as (z, y, x) (axial slice = ``array[k]``), which is mlbseg's one array convention; nibabel's (x, y, z)
order never appears inside the package. Geometry follows nnU-Net's convention:

- ``spacing``: voxel size in mm in **array order (z, y, x)**;
- ``origin``: world position (mm) of voxel (0, 0, 0) in ITK/LPS **(x, y, z)** order, as in the file header;
- ``direction``: the 3×3 direction cosine matrix, row-major, 9 floats, ITK/LPS, as in the file header.

``write_volume(path, array, geometry)`` restores a file with the same header geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlbseg.errors import UserError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha")

Geometry = dict[str, list[float]]


def volume_suffix(path: Path) -> str | None:
    """The volume extension of ``path`` (``.nii.gz``, ``.nii``, ``.mhd`` or ``.mha``), else None."""
    name = path.name.lower()
    return next((suffix for suffix in VOLUME_SUFFIXES if name.endswith(suffix)), None)


def _open(path: Path) -> Any:
    """A SimpleITK reader whose header has been read; a missing file or bad header is a UserError."""
    import SimpleITK as sitk

    if not path.is_file():
        raise UserError(f"{path}: no such file")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise UserError(
            f"{path}: cannot read this volume's header (not a valid MetaImage/NIfTI file?)"
        ) from None
    return reader


def _read_image(path: Path) -> Any:
    """Read with SimpleITK in two steps, so a bad header and bad voxel data get their own message."""
    reader = _open(path)
    try:
        return reader.Execute()
    except RuntimeError:
        data = (
            " (missing or truncated .raw data file?)"
            if volume_suffix(path) == ".mhd"
            else " (truncated file?)"
        )
        raise UserError(f"{path}: cannot read this volume's voxel data{data}") from None


def geometry_of(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]) -> Geometry:
    """The geometry of the first three axes of an N-D (N = 3 or 4) SimpleITK image: spacing as (z, y, x)."""
    dim = len(spacing)
    matrix = np.asarray(direction, dtype=np.float64).reshape(dim, dim)[:3, :3]
    return {
        "spacing": [float(s) for s in spacing[:3][::-1]],
        "origin": [float(o) for o in origin[:3]],
        "direction": [float(d) for d in matrix.ravel()],
    }


def read_header(path: str | Path) -> tuple[tuple[int, int, int], Geometry]:
    """Size (x, y, z) and geometry of a 3-D or 4-D volume, without reading its voxels."""
    path = Path(path)
    reader = _open(path)
    if reader.GetDimension() not in (3, 4):
        raise UserError(f"{path}: expected a 3-D or 4-D volume, got size {reader.GetSize()}")
    size = tuple(int(n) for n in reader.GetSize()[:3])
    return size, geometry_of(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())  # type: ignore[return-value]


def read_volume(path: str | Path, channel: int | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a 3-D volume, or one channel of a 4-D one (MSD Task05: 0 = T2, 1 = ADC).

    Args:
        path: A ``.mhd``/``.mha`` (with its data file next to it), ``.nii`` or ``.nii.gz`` file.
        channel: None: the file must be 3-D. An int: the channel of a 4-D file; a 3-D file accepts only 0.

    Returns:
        ``(array, geometry)``: the voxels [Z, Y, X] in the file's own dtype (int16 for PROMISE12 T2, uint8
        or int8 for its masks), and the geometry described in the module docstring.

    Raises:
        UserError: missing or unreadable file (bad header, truncated data), not a 3-D (or, with a channel,
            4-D) scalar volume, no such channel.
    """
    import SimpleITK as sitk

    path = Path(path)
    image = _read_image(path)
    dim = image.GetDimension()
    if image.GetNumberOfComponentsPerPixel() != 1 or dim not in ((3,) if channel is None else (3, 4)):
        expected = "a 3-D" if channel is None else "a 3-D or 4-D (multi-channel)"
        raise UserError(f"{path}: expected {expected} scalar volume, got size {image.GetSize()}")
    array = sitk.GetArrayFromImage(image)  # [Z, Y, X] or [C, Z, Y, X]
    if dim == 3 and channel not in (None, 0):
        raise UserError(f"{path}: is a 3-D volume with one channel; --channel {channel} does not exist")
    if dim == 4:
        if not 0 <= channel < array.shape[0]:  # type: ignore[operator]
            raise UserError(
                f"{path}: has {array.shape[0]} channels (0..{array.shape[0] - 1}); got --channel {channel}"
            )
        array = np.ascontiguousarray(array[channel])
    return array, geometry_of(image.GetSpacing(), image.GetOrigin(), image.GetDirection())


def write_volume(path: str | Path, array: np.ndarray, geometry: Geometry, compress: bool = False) -> None:
    """Write a [Z, Y, X] array with ``geometry`` (module docstring) as MetaImage or NIfTI by extension.

    A ``.mhd`` gets its data in a ``.raw`` file of the same stem; ``.nii.gz`` is always compressed.
    """
    import SimpleITK as sitk

    if array.ndim != 3:
        raise ValueError(f"write_volume expects a [Z, Y, X] array, got shape {array.shape}")
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing([float(s) for s in geometry["spacing"][::-1]])
    image.SetOrigin([float(o) for o in geometry["origin"]])
    image.SetDirection([float(d) for d in geometry["direction"]])
    sitk.WriteImage(image, str(path), useCompression=compress)
