"""ISIC 2019 dermoscopy (8 classes) with synthetic label noise on the training split.

Layout under ``root``: ``ISIC_2019_Training_GroundTruth.csv`` (header
``image,MEL,NV,BCC,AK,BKL,DF,VASC,SCC,UNK``, one-hot cells written ``0.0``/``1.0``, CRLF or LF) and
``ISIC_2019_Training_Input/<image>.jpg``. The split is either read from ``train.lst``, ``val.lst`` (the meta
set) and ``test.lst`` in ``split_dir`` (one image id per line, as the reference ships them) or drawn
class-stratified from a seed. Items keep the CSV order, filtered by split membership (docs/reference.md §4),
which the ``l2b_*`` noise draws depend on.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from mlbseg.cls.data import ClassificationData, ImageListDataset
from mlbseg.cls.noise import L2B_SCHEMES, corrupt_labels
from mlbseg.cls.sampling import Rng, rank_within_class
from mlbseg.cls.transforms import isic_transform
from mlbseg.errors import UserError

CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
NUM_CLASSES = len(CLASSES)
CSV_NAME = "ISIC_2019_Training_GroundTruth.csv"
IMAGE_DIR = "ISIC_2019_Training_Input"
SPLIT_FILES = ("train.lst", "val.lst", "test.lst")


def read_isic_csv(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Image ids (str [N]) and class indices (int64 [N], MEL=0 … SCC=7) of the ground-truth CSV, in order."""
    path = Path(path)
    try:
        cells = np.char.strip(
            np.loadtxt(io.StringIO(path.read_text()), dtype=str, delimiter=",", comments=None, ndmin=2)
        )
    except FileNotFoundError as err:
        raise UserError(f"{path} not found: put the ISIC 2019 training ground-truth CSV there") from err
    except ValueError as err:
        raise UserError(f"{path}: malformed CSV ({err})") from err
    header = ("image", *CLASSES, "UNK")
    if cells.shape[1] != len(header) or tuple(cells[0]) != header:
        raise UserError(f"{path}: expected the header {','.join(header)}")
    ids, hot = cells[1:, 0], cells[1:, 1:] == "1.0"  # [N], [N, 9]
    bad = hot.sum(axis=1) != 1
    if bad.any():
        raise UserError(f"{path}: row {ids[np.argmax(bad)]} must have exactly one '1.0'; fix the row")
    labels = hot.argmax(axis=1).astype(np.int64)
    if np.any(labels == NUM_CLASSES):
        raise UserError(
            f"{path}: row {ids[np.argmax(labels == NUM_CLASSES)]} is UNK; use the 8 known classes"
        )
    return ids, labels


def read_split_lists(split_dir: str | Path, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into the CSV rows (ascending = CSV order) of ``train.lst``, ``val.lst`` and ``test.lst``."""
    split_dir = Path(split_dir)
    parts, taken = [], np.zeros(ids.size, dtype=bool)
    for name in SPLIT_FILES:
        path = split_dir / name
        try:
            listed = np.array(path.read_text().split())
        except FileNotFoundError as err:
            raise UserError(
                f"{path} not found: split_dir needs {', '.join(SPLIT_FILES)} (one id per line)"
            ) from err
        unknown = listed[~np.isin(listed, ids)]
        if unknown.size:
            raise UserError(f"{path}: {unknown.size} ids are not in {CSV_NAME} (first: {unknown[0]})")
        member = np.isin(ids, listed)  # set membership, vectorised (the reference scans a list per row)
        if np.any(member & taken):
            raise UserError(f"{path}: id {ids[np.argmax(member & taken)]} is also in an earlier list")
        taken |= member
        parts.append(np.flatnonzero(member))
    return parts[0], parts[1], parts[2]


def draw_isic_split(
    labels: np.ndarray, meta_per_class: int, test_fraction: float, rng: Rng
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class-stratified split: per class meta_per_class → meta, round(test_fraction·n_c) → test, rest → train.

    Returns:
        (train, meta, test) indices into ``labels``, int64, ascending.
    """
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    num_test = np.rint(test_fraction * counts).astype(np.int64)
    short = counts - meta_per_class - num_test < 1
    if short.any():
        c = int(np.argmax(short))
        raise UserError(
            f"class {CLASSES[c]} has only {counts[c]} images: lower meta_per_class ({meta_per_class}) "
            f"or test_fraction ({test_fraction}) so some remain for training"
        )
    rank = rank_within_class(labels, rng)
    is_meta = rank < meta_per_class
    is_test = ~is_meta & (rank < meta_per_class + num_test[labels])
    return np.flatnonzero(~is_meta & ~is_test), np.flatnonzero(is_meta), np.flatnonzero(is_test)


def _check_images(image_dir: Path, files: np.ndarray) -> None:
    if not image_dir.is_dir():
        raise UserError(f"{image_dir} not found: put the ISIC 2019 training JPEGs there")
    missing = files[~np.isin(files, np.array(os.listdir(image_dir)))]
    if missing.size:
        raise UserError(f"{image_dir}: {missing.size} images of the split are missing (first: {missing[0]})")


def build_isic(
    root: str | Path,
    *,
    noise: str = "l2b_unif",
    noise_rate: float = 0.2,
    seed: int = 0,
    split_dir: str | Path | None = None,
    meta_per_class: int = 80,
    test_fraction: float = 0.17,
    split_seed: int = 0,
) -> ClassificationData:
    """ISIC 2019 with noise on the training split; meta (val) and test keep their clean labels.

    Args:
        root: Folder with the CSV and ``ISIC_2019_Training_Input/``.
        noise: A scheme of :data:`mlbseg.cls.noise.SCHEMES` except ``asymmetric`` (no semantic map).
        noise_rate: The scheme's parameter.
        seed: Seeds the noise. ``l2b_*`` schemes draw from ``RandomState(seed)`` over the training rows in CSV
            order, which reproduces the reference's labels for the reference's ``train.lst``.
        split_dir: Folder with ``train.lst``/``val.lst``/``test.lst``; None draws a split.
        meta_per_class: Drawn split only: meta images per class (the reference's val.lst has 80).
        test_fraction: Drawn split only: test share of every class (the reference's test.lst: ~17 %).
        split_seed: Drawn split only: its seed, separate from ``seed`` so repeats share one test set.

    Both training and meta images get the training augmentation, as in the reference.
    """
    root = Path(root)
    ids, labels = read_isic_csv(root / CSV_NAME)
    if split_dir is None:
        train, meta, test = draw_isic_split(
            labels, meta_per_class, test_fraction, np.random.default_rng(split_seed)
        )
    else:
        train, meta, test = read_split_lists(split_dir, ids)
    files = np.char.add(ids, ".jpg")
    _check_images(root / IMAGE_DIR, files[np.concatenate([train, meta, test])])
    rng = np.random.RandomState(seed) if noise in L2B_SCHEMES else np.random.default_rng(seed)
    noisy = corrupt_labels(labels[train], noise, noise_rate, num_classes=NUM_CLASSES, rng=rng)
    image_dir = root / IMAGE_DIR
    train_tf, test_tf = isic_transform(train=True), isic_transform(train=False)
    return ClassificationData(
        train=ImageListDataset(image_dir, files[train], noisy.labels, train_tf),
        meta=ImageListDataset(image_dir, files[meta], labels[meta], train_tf),
        test=ImageListDataset(image_dir, files[test], labels[test], test_tf),
        num_classes=NUM_CLASSES,
        noisy_labels=noisy.labels,
        clean_labels=labels[train],
        noise_rate=noisy.rate,
    )
