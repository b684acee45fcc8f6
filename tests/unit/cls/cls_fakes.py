"""Writers of tiny classification datasets in their native formats (CIFAR, Clothing1M, ISIC 2019)."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

ISIC_HEADER = "image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK"


def write_cifar10(
    root: Path,
    per_batch: int = 60,
    test_size: int = 50,
    seed: int = 0,
    protocol: int = pickle.DEFAULT_PROTOCOL,
) -> Path:
    """cifar-10-batches-py: 5 training batches of ``per_batch`` images (balanced labels) and a test batch."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        n = test_size if name == "test_batch" else per_batch
        labels = rng.permutation(np.arange(k, k + n) % 10).tolist()
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    return root


def with_numpy1_paths(blob: bytes) -> bytes:
    """A protocol 0–3 pickle (text GLOBAL opcodes) as numpy 1 writes it: ``numpy.core``, not ``_core``."""
    return blob.replace(b"numpy._core.", b"numpy.core.")


def _py2_str(value: bytes) -> bytes:
    return b"T" + struct.pack("<I", len(value)) + value  # BINSTRING: a Python 2 str


def _py2_int(value: int) -> bytes:
    return b"J" + struct.pack("<i", value)  # BININT


def _py2_array(array: np.ndarray) -> bytes:
    """A 2-D uint8 array as numpy 1 under Python 2 reduced it: _reconstruct, then __setstate__."""
    dtype = b"cnumpy\ndtype\n" + _py2_str(b"u1") + _py2_int(0) + _py2_int(1) + b"\x87R"  # dtype('u1', 0, 1)
    dtype += b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0) + b"tb"
    empty = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + _py2_int(0) + b"\x85" + _py2_str(b"b")
    )
    shape = _py2_int(array.shape[0]) + _py2_int(array.shape[1]) + b"\x86"
    state = b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(array.tobytes()) + b"tb"
    return empty + b"\x87R" + state


def python2_pickle(batch: dict[str, np.ndarray | list[int] | bytes]) -> bytes:
    """``batch`` as Python 2's cPickle (protocol 2) wrote the original CIFAR files: str as BINSTRING."""
    items = b""
    for key, value in batch.items():
        if isinstance(value, np.ndarray):
            encoded = _py2_array(value)
        elif isinstance(value, bytes):
            encoded = _py2_str(value)
        else:
            encoded = b"](" + b"".join(_py2_int(v) for v in value) + b"e"
        items += _py2_str(key.encode()) + encoded
    return b"\x80\x02}(" + items + b"u."


def write_cifar100(root: Path, per_class: int = 4, seed: int = 0) -> tuple[Path, np.ndarray]:
    """cifar-100-python train/test; returns the super-class of every fine class (a shuffled grouping)."""
    rng = np.random.default_rng(seed)
    coarse_of = rng.permutation(100) // 5  # super-classes are *not* consecutive blocks of fine labels
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", 100 * per_class), ("test", 100)):
        fine = rng.permutation(np.arange(n) % 100)
        batch = {
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": fine.tolist(),
            "coarse_labels": coarse_of[fine].tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    return root, coarse_of


def write_jpeg(path: Path, rng: np.random.Generator, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def write_clothing1m(root: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Clothing1M lists over 14 classes; class c has 3 + c noisy training images (c=0 has 3)."""
    rng = np.random.default_rng(seed)
    train_labels = np.repeat(np.arange(14), 3 + np.arange(14))
    train_keys = [f"images/{i % 3}/{i % 7:02d}/n{i}.jpg" for i in range(train_labels.size)]
    val_labels, test_labels = np.repeat(np.arange(14), 3), np.repeat(np.arange(14), 2)
    val_keys = [f"images/9/00/v{i}.jpg" for i in range(val_labels.size)]
    test_keys = [f"images/9/01/t{i}.jpg" for i in range(test_labels.size)]
    # The first 20 training images also have a clean label: equal to the noisy one for even i.
    train_clean = np.where(np.arange(20) % 2 == 0, train_labels[:20], (train_labels[:20] + 1) % 14)
    clean_pairs = list(zip(train_keys[:20], train_clean, strict=True))
    clean_pairs += list(zip(val_keys, val_labels, strict=True)) + list(
        zip(test_keys, test_labels, strict=True)
    )
    noisy_pairs = list(zip(train_keys, train_labels, strict=True))
    (root / "noisy_label_kv.txt").write_text("".join(f"{k} {v}\n" for k, v in noisy_pairs[::-1]))
    (root / "clean_label_kv.txt").write_text("".join(f"{k} {v}\n" for k, v in clean_pairs))
    for name, keys in (("noisy_train", train_keys), ("clean_val", val_keys), ("clean_test", test_keys)):
        (root / f"{name}_key_list.txt").write_text("\n".join(keys) + "\n")
    for key in train_keys[:2] + val_keys[:1] + test_keys[:1]:
        write_jpeg(root / key, rng)
    (root / "images").mkdir(exist_ok=True)
    return {"train_labels": train_labels, "train_clean": train_clean, "val_labels": val_labels}


def write_isic(root: Path, counts: tuple[int, ...] = (9, 20, 8, 7, 8, 6, 6, 7), seed: int = 0) -> np.ndarray:
    """ISIC CSV (CRLF, ``0.0``/``1.0`` cells) with ``counts[c]`` rows of class c in shuffled order, and JPEGs.

    Returns the clean labels in CSV order.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(8), counts))
    rows = [ISIC_HEADER]
    for i, label in enumerate(labels):
        cells = ["1.0" if c == label else "0.0" for c in range(9)]
        rows.append(",".join([f"ISIC_{i:07d}", *cells]))
        write_jpeg(root / "ISIC_2019_Training_Input" / f"ISIC_{i:07d}.jpg", rng)
    (root / "ISIC_2019_Training_GroundTruth.csv").write_bytes(("\r\n".join(rows) + "\r\n").encode())
    return labels
