"""Reading pickled containers of numpy arrays without letting the file run code.

Unpickling can call any global a file names (``os.system`` included), so mlbseg never calls
``pickle.load`` or ``numpy.load(allow_pickle=True)`` on a user's file. :class:`ArrayUnpickler` builds
only dicts, lists, tuples, str, bytes, numbers and numpy arrays; any other global is a
:class:`~mlbseg.errors.UserError` naming the file, raised before the global is resolved. Users: the CIFAR
pickles (:mod:`mlbseg.cls.cifar`) and the published code's ``np.save``-d dicts (:mod:`mlbseg.prep.legacy`).
"""

from __future__ import annotations

import codecs
import functools
import pickle
from pathlib import Path
from typing import IO, Any

import numpy as np

from mlbseg.errors import UserError

# What unpickling a damaged file raises (a bad opcode, a cut-off stream, bad arguments to an allowed global).
DAMAGED = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError)


def _latin1_encode(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as pickle protocols 0–2 use it to rebuild ``bytes``, limited to latin-1."""
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"bytes encoded as {encoding!r}, not latin1")
    return codecs.encode(text, "latin1")


@functools.cache
def _array_globals() -> dict[tuple[str, str], Any]:
    """The globals a pickled container of numpy arrays needs, under numpy 1 (``numpy.core``) and 2.

    ``_reconstruct`` (protocols 0–4) and ``_frombuffer`` (protocol 5) are taken from numpy's own reduction
    of an array, so the module that holds them is never imported under its other name.
    """
    sample = np.zeros(1, np.uint8)
    reconstruct, frombuffer = sample.__reduce__()[0], sample.__reduce_ex__(5)[0]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, tuples, str, bytes, numbers and numpy arrays.

    Python 2 strings are decoded as latin-1, as numpy needs for arrays pickled by Python 2.

    Args:
        file: The open binary stream, positioned at the pickle.
        path: The file, for messages.
        what: What the file should be, for messages (e.g. ``"CIFAR pickle"``).
    """

    def __init__(self, file: IO[bytes], path: Path, what: str) -> None:
        super().__init__(file, encoding="latin1")
        self.path, self.what = path, what

    def find_class(self, module: str, name: str) -> Any:
        """The allowed global ``module.name``; any other is a UserError."""
        found = _array_globals().get((module, name))
        if found is None:
            raise UserError(f"{self.path}: not a {self.what} (refuses global {module}.{name})")
        return found


def load_npy_object(path: Path, what: str) -> Any:
    """The object stored in an ``np.save``-d 0-d object array (e.g. a dict of arrays), unpickled safely.

    Raises:
        UserError: The file is missing, damaged, not a 0-d object ``.npy``, or names another global.
    """
    try:
        with path.open("rb") as file:
            version = np.lib.format.read_magic(file)
            formats = np.lib.format
            read_header = (
                formats.read_array_header_1_0 if version == (1, 0) else formats.read_array_header_2_0
            )
            shape, _, dtype = read_header(file)
            if shape != () or not dtype.hasobject:
                raise UserError(f"{path}: not a {what} (holds a {dtype} array of shape {shape})")
            content = ArrayUnpickler(file, path, what).load()  # np.save pickles the 0-d array itself
    except OSError as err:
        raise UserError(f"{path}: cannot read this .npy file ({err})") from None
    except DAMAGED as err:
        raise UserError(f"{path}: not a readable {what} ({err})") from None
    if not isinstance(content, np.ndarray) or content.shape != ():
        raise UserError(f"{path}: not a {what} (holds a {type(content).__name__})")
    return content.item()
