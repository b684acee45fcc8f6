"""Clothing1M: real-world noisy labels, a per-epoch class-balanced training sample, clean val/test lists.

Layout under ``root`` (docs/reference.md §3): ``images/…`` and the list files ``noisy_label_kv.txt`` /
``clean_label_kv.txt`` (lines ``images/<a>/<b>/<name>.jpg <label>``), ``noisy_train_key_list.txt``,
``clean_val_key_list.txt`` and ``clean_test_key_list.txt`` (one key per line). Keys are paths relative to
``root``. The lists are parsed once into numpy string arrays (no per-epoch re-parsing, §7 item 26; string
arrays rather than Python lists keep DataLoader workers from copying them page by page).

Training uses the whole noisy list through :class:`BalancedEpochSampler`, which draws a fresh class-balanced
sample of ``num_batches × batch_size`` images each epoch, seeded by (seed, epoch).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Sampler

from mlbseg.cls.data import ClassificationData, ImageListDataset, realised_rate
from mlbseg.cls.sampling import pick_per_class, split_quota
from mlbseg.cls.transforms import clothing1m_transform
from mlbseg.errors import UserError

NUM_CLASSES = 14
CLASS_NAMES = (
    "T-shirt", "Shirt", "Knitwear", "Chiffon", "Sweater", "Hoodie", "Windbreaker",
    "Jacket", "Downcoat", "Suit", "Shawl", "Dress", "Vest", "Underwear",
)  # fmt: skip
NOISY_KV, CLEAN_KV = "noisy_label_kv.txt", "clean_label_kv.txt"
TRAIN_LIST, VAL_LIST, TEST_LIST = (
    "noisy_train_key_list.txt",
    "clean_val_key_list.txt",
    "clean_test_key_list.txt",
)


@dataclass(frozen=True)
class Clothing1MLists:
    """The parsed lists; keys are str arrays of paths relative to the root, labels int64.

    Attributes:
        train_keys, train_labels: Noisy training list [N] and its noisy labels.
        train_clean: int64 [N], clean labels of the training images that have one, else -1.
        val_keys, val_labels: Clean validation list (the meta set) and its clean labels.
        test_keys, test_labels: Clean test list and its clean labels.
    """

    train_keys: np.ndarray
    train_labels: np.ndarray
    train_clean: np.ndarray
    val_keys: np.ndarray
    val_labels: np.ndarray
    test_keys: np.ndarray
    test_labels: np.ndarray


def _read_tokens(path: Path) -> np.ndarray:
    try:
        return np.array(path.read_text().split())
    except FileNotFoundError as err:
        raise UserError(
            f"{path} not found: put the Clothing1M list files and images/ under {path.parent}/"
        ) from err


def _read_kv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Keys (sorted, str [M]) and their labels (int64 [M]) of a ``<key> <label>`` file."""
    tokens = _read_tokens(path)
    try:
        if tokens.size % 2:
            raise ValueError("odd number of fields")
        keys, labels = tokens[0::2], tokens[1::2].astype(np.int64)
    except ValueError as err:
        raise UserError(f"{path}: expected lines '<key> <label>' ({err})") from err
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise UserError(f"{path}: labels must lie in 0..{NUM_CLASSES - 1}")
    order = np.argsort(keys)
    return keys[order], labels[order]


def _lookup(keys: np.ndarray, kv: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """Label of every key in a sorted key/label table: int64 [N], -1 where the key is absent."""
    kv_keys, kv_labels = kv
    if kv_keys.size == 0:
        return np.full(keys.size, -1, dtype=np.int64)
    pos = np.searchsorted(kv_keys, keys).clip(max=kv_keys.size - 1)
    return np.where(kv_keys[pos] == keys, kv_labels[pos], -1)


def _labelled(
    root: Path, list_name: str, kv: tuple[np.ndarray, np.ndarray], kv_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Keys of a list file and their labels from ``kv``; UserError if a key has none."""
    keys = _read_tokens(root / list_name)
    labels = _lookup(keys, kv)
    if np.any(labels < 0):
        first = keys[np.argmax(labels < 0)]
        count = int(np.sum(labels < 0))
        raise UserError(f"{root / list_name}: {count} keys have no label in {kv_name} (first: {first})")
    return keys, labels


def load_clothing1m_lists(root: str | Path) -> Clothing1MLists:
    """Parse the five Clothing1M list files under ``root`` (UserError naming a missing or broken one)."""
    root = Path(root)
    noisy_kv, clean_kv = _read_kv(root / NOISY_KV), _read_kv(root / CLEAN_KV)
    train_keys, train_labels = _labelled(root, TRAIN_LIST, noisy_kv, NOISY_KV)
    val_keys, val_labels = _labelled(root, VAL_LIST, clean_kv, CLEAN_KV)
    test_keys, test_labels = _labelled(root, TEST_LIST, clean_kv, CLEAN_KV)
    return Clothing1MLists(
        train_keys, train_labels, _lookup(train_keys, clean_kv), val_keys, val_labels, test_keys, test_labels
    )


def balanced_epoch_indices(
    labels: np.ndarray, num_samples: int, num_classes: int, *, seed: int, epoch: int
) -> np.ndarray:
    """A class-balanced random sample for one epoch, in random order: int64 [<= num_samples].

    Each class gets ``num_samples // K`` images, ``num_samples % K`` random classes one more (so the total is
    exactly ``num_samples``, 250 × 256 = 64 000 for the paper); a class with fewer images gives all it has.
    The draw depends only on (seed, epoch).
    """
    rng = np.random.default_rng([seed, epoch])
    quotas = split_quota(num_samples, num_classes, rng)
    return rng.permutation(np.flatnonzero(pick_per_class(labels, quotas, rng)))


class BalancedEpochSampler(Sampler[int]):
    """Sampler of :func:`balanced_epoch_indices`; call ``set_epoch(epoch)`` before each epoch."""

    def __init__(self, labels: np.ndarray, num_samples: int, num_classes: int, seed: int) -> None:
        self.labels = np.asarray(labels, dtype=np.int64)
        self.num_samples, self.num_classes, self.seed = num_samples, num_classes, seed
        self.epoch = 0
        self._cache: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose sample the next iteration yields."""
        self.epoch = epoch

    def indices(self) -> np.ndarray:
        """Indices into the training list for the current epoch, int64 [<= num_samples]."""
        if self._cache is None or self._cache[0] != self.epoch:
            indices = balanced_epoch_indices(
                self.labels, self.num_samples, self.num_classes, seed=self.seed, epoch=self.epoch
            )
            self._cache = (self.epoch, indices)
        return self._cache[1]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return len(self.indices())


def _meta_subset(labels: np.ndarray, num_meta: int, seed: int) -> np.ndarray:
    """Indices (ascending) of a seeded class-balanced subset of num_meta validation images."""
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    if num_meta <= 0 or num_meta % NUM_CLASSES or num_meta // NUM_CLASSES > counts.min():
        raise UserError(
            f"num_meta={num_meta}: need a positive multiple of {NUM_CLASSES} of at most "
            f"{NUM_CLASSES * counts.min()} (the rarest class has {counts.min()} validation images); "
            "or leave it unset to use the whole validation list"
        )
    quotas = np.full(NUM_CLASSES, num_meta // NUM_CLASSES)
    return np.flatnonzero(pick_per_class(labels, quotas, np.random.default_rng(seed)))


def build_clothing1m(
    root: str | Path,
    *,
    num_batches: int = 250,
    batch_size: int = 256,
    num_meta: int | None = None,
    seed: int = 0,
) -> ClassificationData:
    """Clothing1M: noisy training list (balanced per-epoch sampler), clean val list as meta, clean test list.

    Args:
        root: Folder with the list files and ``images/``.
        num_batches: Batches per epoch; the sampler yields ``num_batches × batch_size`` images.
        batch_size: Training batch size the sample is sized for.
        num_meta: None for the whole validation list (the paper), else a seeded class-balanced subset.
        seed: Seeds the per-epoch samples and the meta subset.

    The meta set uses the test transform (no augmentation), as the reference does.
    """
    root = Path(root)
    lists = load_clothing1m_lists(root)
    if not (root / "images").is_dir():
        raise UserError(f"{root / 'images'} not found: put the Clothing1M images folder under {root}/")
    meta_idx = (
        np.arange(lists.val_keys.size) if num_meta is None else _meta_subset(lists.val_labels, num_meta, seed)
    )
    train_tf, test_tf = clothing1m_transform(train=True), clothing1m_transform(train=False)
    return ClassificationData(
        train=ImageListDataset(root, lists.train_keys, lists.train_labels, train_tf),
        meta=ImageListDataset(root, lists.val_keys[meta_idx], lists.val_labels[meta_idx], test_tf),
        test=ImageListDataset(root, lists.test_keys, lists.test_labels, test_tf),
        num_classes=NUM_CLASSES,
        noisy_labels=lists.train_labels,
        clean_labels=lists.train_clean,
        noise_rate=realised_rate(lists.train_labels, lists.train_clean),
        train_sampler=BalancedEpochSampler(lists.train_labels, num_batches * batch_size, NUM_CLASSES, seed),
    )
