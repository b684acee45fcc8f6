"""Read and write 3-D volumes as (z, y, x) numpy arrays plus their geometry (docs/design.md §2).

Every volume enters mlbseg through :func:`read_volume` and leaves through :func:`write_volume`. Headers
and geometry are read with SimpleITK for MetaImage (``.mhd``/``.mha``) and NIfTI (``.nii``/``.nii.gz``)
alike, and so are MetaImage voxels; NIfTI voxels are read with nibabel, because SimpleITK's NIfTI reader
silently sets NaN and inf voxels to 0 and pads a truncated file. Arrays are (z, y, x) (axial slice =
``array[k]``), SimpleITK's order and mlbseg's one array convention; nibabel's (x, y, z) order is reversed
on reading and never appears inside the package. Geometry follows nnU-Net's convention:

- ``spacing``: voxel size in mm in **array order (z, y, x)**;
- ``origin``: world position (mm) of voxel (0, 0, 0) in ITK/LPS **(x, y, z)** order, as in the file header;
- ``direction``: the 3×3 direction cosine matrix, row-major, 9 floats, ITK/LPS, as in the file header.

``write_volume(path, array, geometry)`` restores a file with the same header geometry.

Before reading the voxels :func:`read_volume` checks that the file holds as many bytes as its header
declares (for ``.nii.gz`` the whole decompressed stream, whose CRC is checked on the way; for MetaImage the
``.raw`` file or the data after an ``.mha`` header, so that MetaIO never prints its own complaint), and
after reading it refuses NaN and inf voxels. Both are a :class:`~mlbseg.errors.UserError` naming the file.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mlbseg.errors import UserError

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mhd", ".mha")
NIFTI_SUFFIXES = (".nii.gz", ".nii")

Geometry = dict[str, list[float]]

SPACING_RTOL = 1e-3
ORIGIN_TOLERANCE = 1e-2  # of the smallest voxel size
DIRECTION_ATOL = 1e-4
# Bytes per component of the MetaImage element types (MetaIO's MET_ValueTypeSize; MET_LONG is 4 bytes).
_METAIO_BYTES = {
    "MET_CHAR": 1,
    "MET_UCHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
}
_CHUNK = 1 << 20


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


def _decompressed_length(path: Path) -> int:
    """Length of a gzip file's decompressed stream; a truncated or corrupt stream is a UserError."""
    length = 0
    try:
        with gzip.open(path, "rb") as stream:
            while chunk := stream.read(_CHUNK):
                length += len(chunk)
    except (OSError, EOFError, zlib.error) as err:  # gzip.BadGzipFile is an OSError
        raise UserError(
            f"{path}: cannot read this volume's voxel data (damaged gzip stream: {err}); copy the file again"
        ) from None
    return length


def _nifti_extent(path: Path, reader: Any) -> tuple[Path, int, int] | None:
    """(file, bytes it holds, bytes its header declares: ``vox_offset`` + voxels) of a NIfTI volume.

    For ``.nii.gz`` the bytes held are those of the decompressed stream. None if SimpleITK does not report
    the header fields needed.
    """
    if not all(reader.HasMetaDataKey(key) for key in ("dim[0]", "bitpix", "vox_offset")):
        return None
    meta = reader.GetMetaData
    dims = [int(meta(f"dim[{axis}]")) for axis in range(1, int(meta("dim[0]")) + 1)]
    declared = int(float(meta("vox_offset"))) + math.prod(dims) * int(meta("bitpix")) // 8
    held = _decompressed_length(path) if volume_suffix(path) == ".nii.gz" else path.stat().st_size
    return path, held, declared


def _metaimage_fields(path: Path) -> tuple[dict[str, str], int]:
    """The ``key = value`` lines of a MetaImage header up to ``ElementDataFile``, and the header's length."""
    fields: dict[str, str] = {}
    with path.open("rb") as file:
        while "ElementDataFile" not in fields and (line := file.readline()):
            key, _, value = line.decode("latin-1").partition("=")
            fields[key.strip()] = value.strip()
        return fields, file.tell()


def _metaimage_extent(path: Path) -> tuple[Path, int, int] | None:
    """(data file, bytes it holds, bytes the header declares) of a MetaImage; None where not checkable.

    Compressed data, file lists and file patterns, and element types outside :data:`_METAIO_BYTES` are
    left to SimpleITK.
    """
    fields, header_length = _metaimage_fields(path)
    name, item = fields.get("ElementDataFile", ""), _METAIO_BYTES.get(fields.get("ElementType", ""))
    compressed = fields.get("CompressedData", "False").upper().startswith(("T", "1"))
    if item is None or compressed or name in ("", "LIST") or "%" in name:
        return None
    local = name == "LOCAL"
    data = path if local else path.parent / name
    skip = header_length if local else max(0, int(fields.get("HeaderSize", "0")))
    voxels = math.prod(int(n) for n in fields["DimSize"].split())
    declared = skip + voxels * int(fields.get("ElementNumberOfChannels", "1")) * item
    if not data.is_file():
        raise UserError(f"{path}: cannot read this volume's voxel data (its data file {data} is missing)")
    return data, data.stat().st_size, declared


def _check_complete(path: Path, reader: Any) -> None:
    """UserError unless the file holds every voxel byte its header declares (SimpleITK would pad it)."""
    nifti = volume_suffix(path) in NIFTI_SUFFIXES
    extent = _nifti_extent(path, reader) if nifti else _metaimage_extent(path)
    if extent is not None and extent[1] < extent[2]:
        data, held, declared = extent
        raise UserError(
            f"{path}: cannot read this volume's voxel data (truncated: {data.name} holds {held} of the "
            f"{declared} bytes its header declares); copy the file again"
        )


def _nifti_voxels(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """A NIfTI file's voxels read with nibabel, in SimpleITK's array ``shape`` and native byte order."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    try:
        data = np.asanyarray(nib.load(path, mmap=False).dataobj)
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(
            f"{path}: cannot read this volume's voxel data ({reason}); copy the file again"
        ) from None
    # nibabel's (x, y, z[, c]) -> (z, y, x) or (c, z, y, x); reshape drops trailing 1-sized axes, as ITK does
    data = data.T.reshape(shape)
    return np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("="))


def _voxels(path: Path, reader: Any) -> np.ndarray:
    """All voxels of an opened volume, [Z, Y, X] or [C, Z, Y, X], once the file is known to be complete."""
    import SimpleITK as sitk

    _check_complete(path, reader)
    if volume_suffix(path) in NIFTI_SUFFIXES:
        return _nifti_voxels(path, tuple(int(n) for n in reversed(reader.GetSize())))
    try:
        return sitk.GetArrayFromImage(reader.Execute())
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


def geometry_difference(geometry: Geometry, reference: Geometry) -> str | None:
    """The first of ``spacing``, ``origin``, ``direction`` in which two grids differ, or None.

    Tolerances: spacing within 0.1% (relative); origin within 1% of the reference's smallest voxel size
    in every coordinate (a hundredth of a voxel misaligns nothing, yet is far above the float32 rounding
    of NIfTI headers); direction cosines within 1e-4 (absolute).

    Example:
        >>> eye = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        >>> grid = {"spacing": [3.0, 0.5, 0.5], "origin": [0.0, 0.0, 0.0], "direction": eye}
        >>> geometry_difference({**grid, "origin": [0.004, 0.0, 0.0]}, grid) is None
        True
        >>> geometry_difference({**grid, "origin": [0.006, 0.0, 0.0]}, grid)
        'origin'
    """
    tolerance = {
        "spacing": {"rtol": SPACING_RTOL, "atol": 1e-5},
        "origin": {"rtol": 0.0, "atol": ORIGIN_TOLERANCE * min(reference["spacing"])},
        "direction": {"rtol": 0.0, "atol": DIRECTION_ATOL},
    }
    return next(
        (key for key, tol in tolerance.items() if not np.allclose(geometry[key], reference[key], **tol)), None
    )


def read_header(path: str | Path) -> tuple[tuple[int, int, int], Geometry]:
    """Size (x, y, z) and geometry of a 3-D or 4-D volume, without reading its voxels."""
    path = Path(path)
    reader = _open(path)
    if reader.GetDimension() not in (3, 4):
        raise UserError(f"{path}: expected a 3-D or 4-D volume, got size {reader.GetSize()}")
    size = tuple(int(n) for n in reader.GetSize()[:3])
    return size, geometry_of(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())  # type: ignore[return-value]


def _read(path: Path, channels: Sequence[int] | None) -> tuple[np.ndarray, Geometry]:
    """Voxels [C, Z, Y, X] (C = 1 for ``channels`` None: a 3-D file) and geometry (:func:`read_channels`)."""
    reader = _open(path)
    dim, size = reader.GetDimension(), reader.GetSize()
    if reader.GetNumberOfComponents() != 1 or dim not in ((3,) if channels is None else (3, 4)):
        expected = "a 3-D" if channels is None else "a 3-D or 4-D (multi-channel)"
        raise UserError(f"{path}: expected {expected} scalar volume, got size {size}")
    available = 1 if dim == 3 else size[3]
    wrong = [channel for channel in channels or () if not 0 <= channel < available]
    if wrong and dim == 3:
        raise UserError(f"{path}: is a 3-D volume with one channel; --channel {wrong[0]} does not exist")
    if wrong:
        raise UserError(f"{path}: has {available} channels (0..{available - 1}); got --channel {wrong[0]}")
    array = _voxels(path, reader)  # [Z, Y, X] or [C, Z, Y, X]
    array = array[None] if dim == 3 else np.ascontiguousarray(array[list(channels or ())])
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UserError(f"{path}: the image contains NaN or inf values; replace them with finite numbers")
    return array, geometry_of(reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())


def read_volume(path: str | Path, channel: int | None = None) -> tuple[np.ndarray, Geometry]:
    """Read a 3-D volume, or one channel of a 4-D one (MSD Task05: 0 = T2, 1 = ADC).

    Args:
        path: A ``.mhd``/``.mha`` (with its data file next to it), ``.nii`` or ``.nii.gz`` file.
        channel: None: the file must be 3-D. An int: the channel of a 4-D file; a 3-D file accepts only 0.

    Returns:
        ``(array, geometry)``: the voxels [Z, Y, X] in the file's own dtype (int16 for PROMISE12 T2, uint8
        or int8 for its masks; float for a NIfTI file with an intensity scaling) in native byte order, and
        the geometry described in the module docstring.

    Raises:
        UserError: missing or unreadable file (bad header, truncated or corrupt data), not a 3-D (or, with
            a channel, 4-D) scalar volume, no such channel, NaN or inf voxels (in the channel read).
    """
    array, geometry = _read(Path(path), None if channel is None else (channel,))
    return array[0], geometry


def read_channels(path: str | Path, channels: Sequence[int]) -> tuple[np.ndarray, Geometry]:
    """Read several channels of a 4-D volume at once (a 3-D file has only channel 0).

    Returns:
        ``(array, geometry)``: [C, Z, Y, X] in the file's dtype, C = len(channels), in the order given;
        the errors are those of :func:`read_volume` (NaN and inf count only in the channels read).
    """
    return _read(Path(path), tuple(channels))


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
