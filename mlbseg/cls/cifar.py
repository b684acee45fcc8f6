"""CIFAR-10/100 from the original python pickles, with a clean class-balanced meta set and label noise.

Layout (docs/reference.md §2): ``<root>/cifar-10-batches-py/data_batch_1..5, test_batch`` (key ``labels``) and
``<root>/cifar-100-python/train, test`` (keys ``fine_labels``, ``coarse_labels``); ``data`` is uint8
[N, 3072] in CHW order. Nothing is downloaded.

The pickles are read with :class:`mlbseg.safe_pickle.ArrayUnpickler`, never ``pickle.load``: unpickling
may call any global a file names, so a file planted in the data folder could run code. The unpickler
resolves only the few globals that CIFAR's dicts of numpy arrays, lists, ints and bytes need, and every
part is then checked (shape, dtype, one label per image, labels within the classes).

Two split modes:

- ``reference`` reproduces the L2B code for a seed: ``RandomState(seed)`` shuffles each class's ascending
  indices in class order, the first ``num_meta/K`` of each go to the meta set, and the training set is kept in
  that class-grouped order. The label noise continues the same stream (``l2b_flip`` switches to the
  reference's ``RandomState(1)`` stream), so ``l2b_unif``/``l2b_flip`` labels are the reference's own.
- ``random`` draws the same kind of split with a ``Generator(seed)`` and keeps the original image order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlbseg.cls.data import ArrayDataset, ClassificationData
from mlbseg.cls.noise import (
    cifar10_semantic_targets,
    corrupt_labels,
    l2b_flip_stream,
    superclass_next_targets,
)
from mlbseg.cls.sampling import Rng, rank_within_class
from mlbseg.cls.transforms import cifar_transform
from mlbseg.errors import UserError
from mlbseg.safe_pickle import DAMAGED, ArrayUnpickler

# name -> (folder, training pickles, test pickles, label key, archive the folder comes from)
_LAYOUT = {
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        "labels",
        "CIFAR-10 python pickles (cifar-10-python.tar.gz, extracted)",
    ),
    "cifar100": (
        "cifar-100-python",
        ("train",),
        ("test",),
        "fine_labels",
        "CIFAR-100 python pickles (cifar-100-python.tar.gz, extracted)",
    ),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100}
COARSE_CLASSES = 20  # CIFAR-100's super-classes
SPLITS = ("reference", "random")


@dataclass(frozen=True)
class CifarArrays:
    """One CIFAR part (train or test) as arrays.

    Attributes:
        images: uint8 [N, 32, 32, 3], HWC RGB.
        labels: int64 [N] (fine labels for CIFAR-100).
        coarse_labels: int64 [N], CIFAR-100's super-classes; None for CIFAR-10.
    """

    images: np.ndarray
    labels: np.ndarray
    coarse_labels: np.ndarray | None


def _read_pickle(path: Path, root: Path, what: str) -> dict:
    if not path.parent.is_dir():
        raise UserError(f"{path.parent} not found: put the {what} under {root}/")
    try:
        with path.open("rb") as file:
            batch = ArrayUnpickler(file, path, "CIFAR pickle").load()
    except FileNotFoundError:
        raise UserError(f"{path} not found: put the {what} under {root}/") from None
    except DAMAGED as err:
        raise UserError(f"{path} is not a readable CIFAR pickle ({err}): extract the archive again") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR pickle (holds a {type(batch).__name__}, not a dict)")
    return batch


def _labels(batch: dict, key: str, *, count: int, num_classes: int, path: Path) -> np.ndarray:
    """``batch[key]`` as int64 [count] in 0..num_classes-1; UserError naming ``path`` otherwise."""
    if key not in batch:
        raise UserError(f"{path}: no '{key}': not a CIFAR pickle of this dataset")
    labels = np.asarray(batch[key])
    if labels.shape != (count,) or (count and labels.dtype.kind not in "iu"):
        raise UserError(f"{path}: '{key}' must hold {count} integer labels, one per image, got {labels.size}")
    if count and not 0 <= labels.min() <= labels.max() < num_classes:
        raise UserError(
            f"{path}: '{key}' holds labels {labels.min()}..{labels.max()}, outside 0..{num_classes - 1}: "
            "not a CIFAR pickle of this dataset"
        )
    return labels.astype(np.int64)


def _images(batch: dict, name: str, path: Path) -> np.ndarray:
    """``batch['data']``, uint8 [N, 3072] CHW rows, as uint8 [N, 32, 32, 3] HWC."""
    data = batch.get("data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype} {list(data.shape)}" if isinstance(data, np.ndarray) else type(data).__name__
        raise UserError(f"{path}: expected uint8 'data' [N, 3072], got {found}: not a {name} pickle")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def load_cifar(root: str | Path, name: str, train: bool) -> CifarArrays:
    """Read the training (``train=True``) or test pickles of ``cifar10``/``cifar100`` under ``root``.

    Raises:
        UserError: A missing folder or file, a file that is not a CIFAR pickle (a global other than numpy's
            array reconstruction, wrong shape or dtype of ``data``, a label count different from the image
            count, labels outside the classes).
    """
    root = Path(root)
    folder, train_files, test_files, label_key, what = _LAYOUT[name]
    images, labels, coarse = [], [], []
    for file_name in train_files if train else test_files:
        path = root / folder / file_name
        batch = _read_pickle(path, root, what)
        images.append(_images(batch, name, path))
        labels.append(
            _labels(batch, label_key, count=len(images[-1]), num_classes=NUM_CLASSES[name], path=path)
        )
        if name == "cifar100":
            coarse.append(
                _labels(batch, "coarse_labels", count=len(images[-1]), num_classes=COARSE_CLASSES, path=path)
            )
    return CifarArrays(
        images=np.ascontiguousarray(np.concatenate(images)),
        labels=np.concatenate(labels),
        coarse_labels=np.concatenate(coarse) if coarse else None,
    )


def _per_class(labels: np.ndarray, num_meta: int, num_classes: int) -> int:
    """Meta images per class; UserError unless num_meta is a multiple of K that every class can supply."""
    if num_meta < 0 or num_meta % num_classes:
        raise UserError(f"num_meta={num_meta} must be a non-negative multiple of the {num_classes} classes")
    counts = np.bincount(labels, minlength=num_classes)
    per_class = num_meta // num_classes
    if per_class >= counts.min():
        raise UserError(
            f"num_meta={num_meta} is too large: class {int(counts.argmin())} has only {counts.min()} images"
            " and needs some left for training"
        )
    return per_class


def reference_meta_split(
    labels: np.ndarray, num_meta: int, num_classes: int, rng: np.random.RandomState
) -> tuple[np.ndarray, np.ndarray]:
    """The reference's split: per class (in order) shuffle its ascending indices, first num_meta/K → meta.

    Returns:
        (meta indices, train indices), int64, both grouped by class in class order.
    """
    per_class = _per_class(labels, num_meta, num_classes)
    order = np.argsort(labels, kind="stable")  # ascending indices, grouped by class
    groups = np.split(order, np.cumsum(np.bincount(labels, minlength=num_classes))[:-1])
    for group in groups:  # one shuffle per class, in class order, as the reference's RNG stream requires
        rng.shuffle(group)
    meta = np.concatenate([group[:per_class] for group in groups])
    train = np.concatenate([group[per_class:] for group in groups])
    return meta, train


def random_meta_split(
    labels: np.ndarray, num_meta: int, num_classes: int, rng: Rng
) -> tuple[np.ndarray, np.ndarray]:
    """num_meta/K random images per class → meta, the rest → train; both int64, ascending image order."""
    is_meta = rank_within_class(labels, rng) < _per_class(labels, num_meta, num_classes)
    return np.flatnonzero(is_meta), np.flatnonzero(~is_meta)


def _asymmetric_targets(name: str, arrays: CifarArrays) -> np.ndarray:
    if name == "cifar10":
        return cifar10_semantic_targets()
    return superclass_next_targets(arrays.labels, arrays.coarse_labels, NUM_CLASSES[name])


def build_cifar(
    root: str | Path,
    name: str = "cifar10",
    *,
    noise: str = "l2b_unif",
    noise_rate: float = 0.2,
    num_meta: int = 1000,
    seed: int = 0,
    split: str = "reference",
) -> ClassificationData:
    """CIFAR-10/100 with a clean meta set of ``num_meta`` images and noise on the remaining training images.

    Args:
        root: Folder holding ``cifar-10-batches-py/`` or ``cifar-100-python/``.
        name: ``cifar10`` or ``cifar100``.
        noise: A scheme of :data:`mlbseg.cls.noise.SCHEMES`; ``asymmetric`` is the CIFAR-10 semantic map
            or, for CIFAR-100, the next class within each super-class.
        noise_rate: The scheme's parameter (``l2b_unif``: expected rate noise_rate·(K−1)/K).
        num_meta: Size of the clean meta set, a multiple of K (default 1000 = 100 or 10 per class).
        seed: Seeds the split and the noise.
        split: ``reference`` (reproduces the L2B code's split and labels) or ``random``.
    """
    if name not in NUM_CLASSES:
        raise UserError(f"unknown CIFAR dataset {name!r}: choose from {list(NUM_CLASSES)}")
    if split not in SPLITS:
        raise UserError(f"unknown CIFAR split {split!r}: choose from {list(SPLITS)}")
    num_classes = NUM_CLASSES[name]
    arrays = load_cifar(root, name, train=True)
    rng: Rng
    if split == "reference":
        rng = np.random.RandomState(seed)
        meta_idx, train_idx = reference_meta_split(arrays.labels, num_meta, num_classes, rng)
    else:
        rng = np.random.default_rng(seed)
        meta_idx, train_idx = random_meta_split(arrays.labels, num_meta, num_classes, rng)
    targets = None
    if noise == "l2b_flip" and split == "reference":
        targets, rng = l2b_flip_stream(num_classes)  # the reference reseeds its global RNG to 1 here
    elif noise == "asymmetric":
        targets = _asymmetric_targets(name, arrays)
    clean = arrays.labels[train_idx]
    noisy = corrupt_labels(clean, noise, noise_rate, num_classes=num_classes, rng=rng, targets=targets)
    test = load_cifar(root, name, train=False)
    train_tf, test_tf = cifar_transform(name, train=True), cifar_transform(name, train=False)
    return ClassificationData(
        train=ArrayDataset(arrays.images[train_idx], noisy.labels, train_tf),
        meta=ArrayDataset(arrays.images[meta_idx], arrays.labels[meta_idx], train_tf),
        test=ArrayDataset(test.images, test.labels, test_tf),
        num_classes=num_classes,
        noisy_labels=noisy.labels,
        clean_labels=clean,
        noise_rate=noisy.rate,
    )
